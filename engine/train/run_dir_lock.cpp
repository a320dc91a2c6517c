#include "engine/train/run_dir_lock.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <utility>

namespace moelab {
namespace {

struct flock whole_file(short type) {
  struct flock range {};
  range.l_type = type;
  range.l_whence = SEEK_SET;  // start 0, length 0: the whole file
  return range;
}

std::string system_error(const std::string& what, const std::string& path) {
  return path + ": cannot " + what + ": " + std::strerror(errno);
}

LockHolder read_holder(const std::string& path) {
  std::ifstream in(path);
  LockHolder holder;
  std::string first;
  std::getline(in, first);
  std::istringstream(first) >> holder.host >> holder.pid;
  std::getline(in, holder.note, '\0');
  while (!holder.note.empty() && holder.note.back() == '\n') holder.note.pop_back();
  return holder;
}

// Whether `fd` is still the file at `path`: a holder that gave up may have removed the file after we
// opened it, and a lock on a removed file guards nothing.
bool still_at_path(int fd, const std::string& path) {
  struct stat open_file {}, named_file {};
  return fstat(fd, &open_file) == 0 && stat(path.c_str(), &named_file) == 0 && open_file.st_dev == named_file.st_dev &&
         open_file.st_ino == named_file.st_ino;
}

}  // namespace

std::string LockHolder::describe() const {
  if (pid == 0) return "a process that is starting and has not named itself yet";
  return "host " + host + ", pid " + std::to_string(pid);
}

ProcessLock::ProcessLock(const std::string& path, const std::string& note) : path_(path), note_(note) {
  for (;;) {
    fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd_ < 0) throw std::runtime_error(system_error("open the lock file", path));
    auto range = whole_file(F_WRLCK);
    if (fcntl(fd_, F_OFD_SETLK, &range) != 0) {
      const int error = errno;
      ::close(fd_);
      if (error != EAGAIN && error != EACCES) throw std::runtime_error(path + ": cannot lock: " + std::strerror(error));
      auto holder = lock_holder(path).value_or(read_holder(path));
      throw LockHeld(path + ": held by " + holder.describe(), holder);
    }
    if (still_at_path(fd_, path)) break;
    ::close(fd_);
  }
  name_holder(getpid());
}

ProcessLock::ProcessLock(ProcessLock&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)), path_(std::move(other.path_)), note_(std::move(other.note_)) {}

ProcessLock::~ProcessLock() {
  if (fd_ >= 0) ::close(fd_);
}

// Written over the old name and then cut to length, so that a reader never sees an empty first line
// once a holder has named itself.
void ProcessLock::name_holder(long pid) {
  const std::string text = this_host() + " " + std::to_string(pid) + "\n" + (note_.empty() ? "" : note_ + "\n");
  if (pwrite(fd_, text.data(), text.size(), 0) != ssize_t(text.size()) || ftruncate(fd_, off_t(text.size())) != 0)
    throw std::runtime_error(system_error("write the lock file", path_));
}

std::optional<LockHolder> lock_holder(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return std::nullopt;
    throw std::runtime_error(system_error("open the lock file", path));
  }
  auto range = whole_file(F_WRLCK);
  const int tested = fcntl(fd, F_OFD_GETLK, &range);
  const int error = errno;
  ::close(fd);
  if (tested != 0) throw std::runtime_error(path + ": cannot test the lock: " + std::strerror(error));
  if (range.l_type == F_UNLCK) return std::nullopt;
  return read_holder(path);
}

std::string run_dir_lock_path(const std::string& run_dir) { return run_dir + "/trainer.lock"; }

std::string this_host() {
  char name[256] = {};
  gethostname(name, sizeof name - 1);
  return name;
}

}  // namespace moelab
