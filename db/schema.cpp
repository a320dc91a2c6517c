// The store's schema as an ordered list of migrations. Version N is the state after migration N;
// PRAGMA user_version records which ones a file has. Never edit a released migration: add one.
// Times are unix seconds (REAL) everywhere; a view that shows them converts with datetime().
#include "db/schema.hpp"

namespace moelab {

const std::vector<Migration>& migrations() {
  static const std::vector<Migration> all = {
      {1, R"SQL(
CREATE TABLE sweeps (
  name        TEXT PRIMARY KEY,
  spec_json   TEXT NOT NULL,
  created_at  REAL NOT NULL
);
CREATE TABLE jobs (
  id          TEXT PRIMARY KEY,       -- hash of the canonical resolved config
  name        TEXT NOT NULL,
  sweep       TEXT NOT NULL DEFAULT '',
  config_json TEXT NOT NULL,
  axes_json   TEXT NOT NULL DEFAULT '{}',
  status      TEXT NOT NULL DEFAULT 'queued',
  attempts    INTEGER NOT NULL DEFAULT 0,
  executor    TEXT NOT NULL DEFAULT '',
  executor_id TEXT NOT NULL DEFAULT '',
  host        TEXT NOT NULL DEFAULT '',
  run_dir     TEXT NOT NULL DEFAULT '',  -- checkpoints, log and (on Slurm) the job's own store
  total_steps INTEGER NOT NULL DEFAULT 0,
  created_at  REAL NOT NULL,
  started_at  REAL,
  finished_at REAL,
  exit_code   INTEGER,
  error       TEXT NOT NULL DEFAULT '',
  eval_status TEXT NOT NULL DEFAULT ''  -- the evaluation stage: '', running, done, failed: <why>
);
CREATE INDEX jobs_by_sweep ON jobs(sweep, status);
CREATE TABLE metrics (
  job_id       TEXT NOT NULL REFERENCES jobs(id),
  step         INTEGER NOT NULL,
  split        TEXT NOT NULL,          -- train | val
  loss         REAL NOT NULL,
  tokens       INTEGER NOT NULL,
  lr           REAL NOT NULL,
  grad_norm    REAL NOT NULL,
  tokens_per_s REAL NOT NULL,
  wall_time    REAL NOT NULL,
  UNIQUE (job_id, step, split)
);
CREATE TABLE routing_stats (
  job_id               TEXT NOT NULL REFERENCES jobs(id),
  step                 INTEGER NOT NULL,
  layer                INTEGER NOT NULL,
  expert_fraction_json TEXT NOT NULL,
  load_std             REAL NOT NULL,
  load_max_over_mean   REAL NOT NULL,
  dead_experts         INTEGER NOT NULL,
  positive_gates       REAL NOT NULL,
  fewer_than_k         REAL NOT NULL,
  router_cosine        REAL NOT NULL,
  UNIQUE (job_id, step, layer)
);
CREATE TABLE checkpoints (
  job_id     TEXT NOT NULL REFERENCES jobs(id),
  step       INTEGER NOT NULL,
  path       TEXT NOT NULL,
  sha256     TEXT NOT NULL,
  created_at REAL NOT NULL,
  UNIQUE (job_id, step)
);
CREATE TABLE evals (
  job_id  TEXT NOT NULL REFERENCES jobs(id),
  step    INTEGER NOT NULL,
  task    TEXT NOT NULL,
  metric  TEXT NOT NULL,
  value   REAL NOT NULL,
  stderr  REAL,
  samples INTEGER NOT NULL,
  source  TEXT NOT NULL,
  UNIQUE (job_id, step, task, metric)
);
CREATE TABLE events (
  id      INTEGER PRIMARY KEY AUTOINCREMENT,
  job_id  TEXT NOT NULL REFERENCES jobs(id),
  time    REAL NOT NULL,
  level   TEXT NOT NULL,
  message TEXT NOT NULL
);
CREATE INDEX events_by_job ON events(job_id, id);

CREATE VIEW latest_val_loss AS
  SELECT j.id AS job_id, j.name, m.step, m.loss
  FROM jobs j JOIN metrics m ON m.job_id = j.id AND m.split = 'val'
  WHERE m.step = (SELECT max(step) FROM metrics WHERE job_id = j.id AND split = 'val');
CREATE VIEW final_train_loss AS
  SELECT j.id AS job_id, j.name, m.step, m.loss
  FROM jobs j JOIN metrics m ON m.job_id = j.id AND m.split = 'train'
  WHERE m.step = (SELECT max(step) FROM metrics WHERE job_id = j.id AND split = 'train');
CREATE VIEW job_axes AS
  SELECT j.id AS job_id, j.name, j.sweep, a.key AS axis, a.value
  FROM jobs j, json_each(j.axes_json) a;
CREATE VIEW job_progress AS
  SELECT j.id AS job_id, j.name, j.sweep, j.status, j.attempts,
         (SELECT max(step) FROM metrics WHERE job_id = j.id AND split = 'train') AS step,
         j.total_steps,
         (SELECT loss FROM metrics WHERE job_id = j.id AND split = 'train' ORDER BY step DESC LIMIT 1) AS train_loss,
         datetime(j.started_at, 'unixepoch') AS started, j.error
  FROM jobs j;
)SQL"},
      {2, R"SQL(
-- A job belongs to every sweep that planned it: studies share runs (the same resolved config is
-- one job), and jobs.sweep keeps only the sweep that last ran it.
CREATE TABLE sweep_jobs (
  sweep     TEXT NOT NULL,
  job_id    TEXT NOT NULL REFERENCES jobs(id),
  axes_json TEXT NOT NULL DEFAULT '{}',
  PRIMARY KEY (sweep, job_id)
);
INSERT INTO sweep_jobs (sweep, job_id, axes_json) SELECT sweep, id, axes_json FROM jobs WHERE sweep != '';
DROP VIEW job_axes;
CREATE VIEW job_axes AS
  SELECT j.id AS job_id, j.name, s.sweep, a.key AS axis, a.value
  FROM sweep_jobs s JOIN jobs j ON j.id = s.job_id, json_each(s.axes_json) a;
)SQL"},
      {3, R"SQL(
-- The most memory a job's training process has needed, over all its attempts (NULL: not recorded,
-- as for jobs trained before this version). Users size `sweep run --jobs` by it.
ALTER TABLE jobs ADD COLUMN peak_resident_bytes INTEGER;
ALTER TABLE jobs ADD COLUMN peak_gpu_bytes INTEGER;
)SQL"},
  };
  return all;
}

}  // namespace moelab
