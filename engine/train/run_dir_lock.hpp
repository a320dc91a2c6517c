// One job, one trainer: the process that trains a job holds an exclusive lock on a file in its run
// directory, and a sweep runner holds one in its work directory. The lock is an open file
// description lock (fcntl F_OFD_SETLK, Linux): like flock(2) it belongs to the open file, so the
// kernel releases it when the holder dies (kill -9 included) and children started with exec do not
// inherit it; unlike flock it can be tested without taking it (F_OFD_GETLK), so `sweep status`,
// `sweep cancel` and a runner looking at a job never make a trainer starting at that moment fail.
// NFS carries these locks between nodes (as POSIX locks), which Slurm array tasks rely on.
// The file names the holder ("<host> <pid>" on its first line, then a free note), for messages.
#pragma once

#include <optional>
#include <stdexcept>
#include <string>

namespace moelab {

struct LockHolder {
  std::string host;
  long pid = 0;      // 0: the holder has not written its name yet (it is starting)
  std::string note;  // what the holder added (a runner: its sweep's name)
  std::string describe() const;  // "host h, pid 12"
};

struct LockHeld : std::runtime_error {
  LockHeld(const std::string& what, LockHolder holder) : std::runtime_error(what), holder(std::move(holder)) {}
  LockHolder holder;
};

class ProcessLock {
 public:
  // Takes the lock on `path` (creating the file, not its directory) and names this process in it.
  // Throws LockHeld, naming `path` and the holder, when another open file holds it; runtime_error
  // when the file cannot be opened.
  ProcessLock(const std::string& path, const std::string& note = "");
  ~ProcessLock();
  ProcessLock(ProcessLock&& other) noexcept;
  ProcessLock(const ProcessLock&) = delete;
  ProcessLock& operator=(const ProcessLock&) = delete;
  ProcessLock& operator=(ProcessLock&&) = delete;

  const std::string& path() const { return path_; }
  // Leaves the lock held until this process ends (the kernel then releases it), rather than until
  // this object is destroyed: a process winding down after its work still counts as the holder.
  void hold_until_exit() { fd_ = -1; }
  // Names `pid` of this host as the holder: a forked child that goes on holding the lock after its
  // parent exits (they share the open file).
  void name_holder(long pid);

 private:
  int fd_ = -1;
  std::string path_, note_;
};

// Who holds the lock at `path`, without taking it; nullopt when nobody does or there is no file.
std::optional<LockHolder> lock_holder(const std::string& path);

// The trainer's lock file in a run directory.
std::string run_dir_lock_path(const std::string& run_dir);

std::string this_host();

}  // namespace moelab
