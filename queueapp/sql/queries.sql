-- Every hot-path statement of the queue, one named block each. Only queueapp/store/ runs them.
-- Times always come from the database's now(), never from a worker's clock.
-- Every write a worker makes after its claim is fenced on (status, worker_id, attempts): when a
-- reaper or a cancel took the task away, the write matches zero rows and changes nothing.

-- enqueue_task --
-- The INSERT and its NOTIFY run in the caller's transaction: a rollback enqueues nothing, a
-- commit wakes a listening worker. PostgreSQL folds identical notifications (same channel and
-- payload) within one transaction, so a loop of enqueues still sends one per queue. A deferred
-- task wakes nobody: the workers' polling picks it up when it is due.
WITH inserted AS (
  INSERT INTO queueapp_task (task_path, queue_name, priority, status, args, kwargs, run_after,
                             enqueued_at, attempts, max_attempts, timeout, worker_ids, errors, cancel_requested)
  VALUES (%(task_path)s, %(queue_name)s, %(priority)s, 'READY', %(args)s::jsonb, %(kwargs)s::jsonb,
          coalesce(%(run_after)s::timestamptz, now()), now(), 0, %(max_attempts)s, %(timeout)s::float8,
          '{}', '[]', false)
  RETURNING id, run_after, enqueued_at, queue_name
)
SELECT id, run_after, enqueued_at, CASE WHEN run_after <= now() THEN pg_notify('taskqueue', queue_name) END
FROM inserted;

-- reserve_task_ids --
-- Bulk enqueue, step 1: ids for n tasks from the table's own identity sequence, and the
-- transaction's clock (now() is fixed within a transaction: the copied rows get exactly what
-- now() would have given them). Ids come in input order, so the rows keep it. The sequence is
-- named as a constant (the id column's, tests/test_project.py checks it): looked up per row
-- through pg_get_serial_sequence() it costs six times as much.
SELECT now(), array(SELECT nextval('queueapp_task_id_seq') FROM generate_series(1, %(n)s::int));

-- copy_tasks --
-- Bulk enqueue, step 2, in the same transaction: the rows themselves, by COPY (no parsing of a
-- VALUES list or a JSON array). The caller sends one notification per queue afterwards.
COPY queueapp_task (id, task_path, queue_name, priority, status, args, kwargs, run_after, enqueued_at,
                    attempts, max_attempts, timeout, worker_ids, errors, cancel_requested)
FROM STDIN;

-- notify_queues --
-- One notification per queue for a batch (see enqueue_task for why a notification is a hint).
SELECT pg_notify('taskqueue', q) FROM unnest(%(queues)s::text[]) AS q;

-- claim_tasks --
-- The CTE is an optimisation fence: as `id IN (SELECT ... LIMIT ... FOR UPDATE)` PostgreSQL may
-- run the subquery more than once and claim more than LIMIT rows. SKIP LOCKED lets concurrent
-- claimers pass each other's locked rows instead of queueing behind them. The ORDER BY matches
-- task_claim_idx (partial on READY), so the plan walks the index and stops after LIMIT rows.
WITH picked AS (
  SELECT id FROM queueapp_task
  WHERE status = 'READY' AND queue_name = ANY(%(queues)s::text[]) AND run_after <= now()
    -- A worker already marked LOST (a zombie back from a pause) claims nothing.
    AND EXISTS (SELECT 1 FROM queueapp_worker w WHERE w.id = %(worker_id)s::uuid AND w.state = 'ALIVE')
  ORDER BY priority DESC, run_after, id
  LIMIT %(limit)s
  FOR UPDATE SKIP LOCKED
)
UPDATE queueapp_task t
SET status = 'RUNNING', worker_id = %(worker_id)s, attempts = t.attempts + 1, started_at = now(),
    worker_ids = array_append(t.worker_ids, %(worker_id)s::uuid)
FROM picked
WHERE t.id = picked.id
RETURNING t.id, t.task_path, t.queue_name, t.priority, t.status, t.args, t.kwargs, t.run_after,
          t.enqueued_at, t.started_at, t.finished_at, t.attempts, t.max_attempts, t.worker_id,
          t.worker_ids, t.errors, t.return_value, t.cancel_requested, t.timeout;

-- release_unknown_claims --
-- After a round whose outcome is unknown (the connection broke before its COMMIT's answer came
-- back) the claim in it may have committed: tasks RUNNING under this worker that it does not hold
-- in memory were claimed by that round and never started. They go back to READY, the attempt not
-- counted, as at shutdown. Nothing else claims for this worker, so nothing else is in that set.
UPDATE queueapp_task t
SET status = 'READY', worker_id = NULL, attempts = t.attempts - 1, started_at = NULL,
    worker_ids = t.worker_ids[1:cardinality(t.worker_ids) - 1]
WHERE t.status = 'RUNNING' AND t.worker_id = %(worker_id)s::uuid AND NOT (t.id = ANY(%(held)s::bigint[]))
RETURNING t.id;

-- recorded_successes --
-- The same uncertainty for the successes sent in that round: those this attempt already recorded.
-- Only this worker's own finish sets SUCCESSFUL or CANCELLED under its id and attempt.
SELECT t.id, t.status
FROM queueapp_task t
JOIN unnest(%(ids)s::bigint[], %(attempts)s::int[]) AS r(id, attempt) ON t.id = r.id
WHERE t.worker_id = %(worker_id)s::uuid AND t.attempts = r.attempt AND t.status IN ('SUCCESSFUL', 'CANCELLED');

-- finish_tasks --
-- Fenced, for a whole batch: one row per (id, attempt, return value) that still belongs to this
-- worker and attempt; a task taken away meanwhile matches nothing and is left out of RETURNING.
-- A cancel requested while the task ran wins: it is recorded CANCELLED, never SUCCESSFUL.
UPDATE queueapp_task t
SET status = CASE WHEN t.cancel_requested THEN 'CANCELLED' ELSE 'SUCCESSFUL' END,
    return_value = CASE WHEN t.cancel_requested THEN NULL ELSE r.return_value::jsonb END,
    finished_at = now()
FROM unnest(%(ids)s::bigint[], %(attempts)s::int[], %(return_values)s::text[]) AS r(id, attempt, return_value)
WHERE t.id = r.id AND t.status = 'RUNNING' AND t.worker_id = %(worker_id)s::uuid AND t.attempts = r.attempt
RETURNING t.id, t.status;

-- fail_task --
-- Fenced. Appends the attempt's error, then: CANCELLED if a cancel was requested, READY again
-- after an exponential backoff with jitter (from the database clock) while attempts remain,
-- else FAILED. The retry condition is spelled out in each CASE because every SET expression
-- must see the row as it was before this UPDATE.
UPDATE queueapp_task
SET errors = errors || jsonb_build_array(%(error)s::jsonb),
    status = CASE WHEN cancel_requested THEN 'CANCELLED'
                  WHEN attempts < max_attempts THEN 'READY'
                  ELSE 'FAILED' END,
    run_after = CASE WHEN NOT cancel_requested AND attempts < max_attempts
                     THEN now() + make_interval(secs => least(%(backoff_max)s::float8,
                              %(backoff_base)s::float8 * power(2, attempts - 1)) * (0.5 + random() / 2))
                     ELSE run_after END,
    finished_at = CASE WHEN NOT cancel_requested AND attempts < max_attempts THEN NULL ELSE now() END,
    worker_id = CASE WHEN NOT cancel_requested AND attempts < max_attempts THEN NULL ELSE worker_id END
WHERE id = %(id)s AND status = 'RUNNING' AND worker_id = %(worker_id)s AND attempts = %(attempt)s
RETURNING status, run_after;

-- cancel_task --
-- READY is cancelled at once; RUNNING gets a request that the task can poll and that stops its
-- result from being recorded as SUCCESSFUL. Terminal tasks are left alone (no row returned).
UPDATE queueapp_task
SET status = CASE WHEN status = 'READY' THEN 'CANCELLED' ELSE status END,
    finished_at = CASE WHEN status = 'READY' THEN now() ELSE finished_at END,
    cancel_requested = true
WHERE id = %(id)s AND status IN ('READY', 'RUNNING')
RETURNING status;

-- get_task --
SELECT id, task_path, queue_name, priority, status, args, kwargs, run_after, enqueued_at,
       started_at, finished_at, attempts, max_attempts, worker_id, worker_ids, errors,
       return_value, cancel_requested, timeout
FROM queueapp_task
WHERE id = %(id)s;

-- is_cancel_requested --
SELECT cancel_requested FROM queueapp_task WHERE id = %(id)s;

-- release_tasks --
-- Shutdown: hand back tasks that were claimed but never started. The attempt was not used, so
-- attempts and worker_ids go back to what they were. Fenced like every worker write.
UPDATE queueapp_task t
SET status = 'READY', worker_id = NULL, attempts = t.attempts - 1, started_at = NULL,
    worker_ids = t.worker_ids[1:cardinality(t.worker_ids) - 1]
FROM unnest(%(ids)s::bigint[], %(attempts)s::int[]) AS r(id, attempt)
WHERE t.id = r.id AND t.attempts = r.attempt AND t.status = 'RUNNING' AND t.worker_id = %(worker_id)s
RETURNING t.id;

-- register_worker --
INSERT INTO queueapp_worker (id, hostname, pid, queues, concurrency, state, started_at, last_heartbeat_at)
VALUES (%(id)s, %(hostname)s, %(pid)s, %(queues)s::varchar[], %(concurrency)s, 'ALIVE', now(), now());

-- beat_worker --
-- No row back means the worker was marked LOST (or STOPPED): it must stop claiming and exit.
UPDATE queueapp_worker SET last_heartbeat_at = now()
WHERE id = %(id)s AND state IN ('ALIVE', 'STOPPING')
RETURNING state;

-- set_worker_state --
-- A LOST worker stays LOST: the reaper's word is final.
UPDATE queueapp_worker
SET state = %(state)s, stopped_at = CASE WHEN %(state)s = 'STOPPED' THEN now() END
WHERE id = %(id)s AND state <> 'LOST'
RETURNING state;

-- reap_workers --
-- One reaper at a time across the cluster (a transaction-scoped advisory lock; a reaper that does
-- not get it does nothing). Marks workers LOST whose heartbeat is older than stale_after seconds,
-- or that are named (a supervisor that saw its child die), then takes back every RUNNING task of
-- a LOST worker: READY after a backoff while attempts remain (the lost attempt counts, so a task
-- that kills its worker cannot do it forever), else FAILED, CANCELLED if a cancel was requested.
-- Tasks are joined to workers LOST before this statement too: a claim that committed while the
-- worker was being marked LOST is picked up by the next run.
-- Each task UPDATE re-checks status = 'RUNNING' on the latest row version (READ COMMITTED), so a
-- task that finished an instant earlier stays SUCCESSFUL or FAILED.
WITH reaper AS MATERIALIZED (
  SELECT pg_try_advisory_xact_lock(hashtext('taskqueue.reaper')) AS locked
),
lost AS (
  UPDATE queueapp_worker w SET state = 'LOST', stopped_at = now()
  FROM reaper
  WHERE reaper.locked AND w.state IN ('ALIVE', 'STOPPING')
    AND (w.last_heartbeat_at < now() - make_interval(secs => %(stale_after)s::float8)
         OR w.id = ANY(%(worker_ids)s::uuid[]))
  RETURNING w.id
),
orphaned AS (
  SELECT id FROM lost
  UNION
  SELECT w.id FROM queueapp_worker w, reaper WHERE reaper.locked AND w.state = 'LOST'
),
taken AS (
  UPDATE queueapp_task t
  SET status = CASE WHEN t.cancel_requested THEN 'CANCELLED'
                    WHEN t.attempts < t.max_attempts THEN 'READY'
                    ELSE 'FAILED' END,
      run_after = CASE WHEN NOT t.cancel_requested AND t.attempts < t.max_attempts
                       THEN now() + make_interval(secs => least(%(backoff_max)s::float8,
                                %(backoff_base)s::float8 * power(2, t.attempts - 1)) * (0.5 + random() / 2))
                       ELSE t.run_after END,
      finished_at = CASE WHEN NOT t.cancel_requested AND t.attempts < t.max_attempts THEN NULL ELSE now() END,
      worker_id = CASE WHEN NOT t.cancel_requested AND t.attempts < t.max_attempts THEN NULL ELSE t.worker_id END,
      errors = t.errors || jsonb_build_array(jsonb_build_object(
        'exception_class_path', 'queueapp.exceptions.WorkerLost',
        'message', 'worker ' || t.worker_id || ' was lost (no heartbeat, or its process died) during attempt '
                   || t.attempts,
        'traceback', '', 'attempt', t.attempts, 'worker_id', t.worker_id))
  FROM orphaned
  WHERE t.worker_id = orphaned.id AND t.status = 'RUNNING'
  RETURNING t.status
)
SELECT (SELECT locked FROM reaper),
       (SELECT count(*) FROM lost),
       count(*) FILTER (WHERE status = 'READY'),
       count(*) FILTER (WHERE status IN ('FAILED', 'CANCELLED'))
FROM taken;

-- preview_reap --
-- What reap_workers would do now, changing nothing (reap_stale --dry-run).
WITH stale AS (
  SELECT id FROM queueapp_worker
  WHERE state IN ('ALIVE', 'STOPPING') AND last_heartbeat_at < now() - make_interval(secs => %(stale_after)s::float8)
  UNION
  SELECT id FROM queueapp_worker WHERE state = 'LOST'
)
SELECT (SELECT count(*) FROM queueapp_worker
        WHERE state IN ('ALIVE', 'STOPPING')
          AND last_heartbeat_at < now() - make_interval(secs => %(stale_after)s::float8)),
       count(*) FILTER (WHERE NOT t.cancel_requested AND t.attempts < t.max_attempts),
       count(*) FILTER (WHERE t.cancel_requested OR t.attempts >= t.max_attempts)
FROM queueapp_task t JOIN stale ON t.worker_id = stale.id
WHERE t.status = 'RUNNING';

-- timed_out_tasks --
-- RUNNING tasks of the given workers past their own timeout (the supervisor kills their process).
SELECT id, worker_id, attempts, timeout
FROM queueapp_task
WHERE status = 'RUNNING' AND worker_id = ANY(%(worker_ids)s::uuid[]) AND timeout IS NOT NULL
  AND started_at + make_interval(secs => timeout) < now();

-- retry_task --
-- FAILED or CANCELLED back to READY with a fresh budget of attempts. attempts only ever grows (it
-- fences workers), so the budget is added on top of it. Two concurrent retries: the second waits
-- for the first's row lock, sees READY, and matches nothing: one new run.
UPDATE queueapp_task
SET status = 'READY', run_after = now(), started_at = NULL, finished_at = NULL, worker_id = NULL,
    cancel_requested = false, return_value = NULL, max_attempts = attempts + %(budget)s
WHERE id = %(id)s AND status IN ('FAILED', 'CANCELLED')
RETURNING status;

-- set_priority --
UPDATE queueapp_task SET priority = %(priority)s
WHERE id = %(id)s AND status = 'READY'
RETURNING id;

-- count_ready --
-- READY tasks of one queue, counted up to cap only: back pressure needs "above the limit or not",
-- and must stay cheap when the queue is huge.
SELECT count(*) FROM (
  SELECT 1 FROM queueapp_task WHERE status = 'READY' AND queue_name = %(queue)s LIMIT %(cap)s
) AS capped;

-- claim_idempotency_key --
-- The first request with a key inserts; a concurrent one waits on the unique index until the first
-- commits (then inserts nothing) or rolls back (then inserts). No row back: the key was taken.
INSERT INTO queueapp_idempotency (api_key_id, key, request_hash, task_ids, created_at)
VALUES (%(api_key_id)s, %(key)s, %(request_hash)s, '{}', now())
ON CONFLICT (api_key_id, key) DO NOTHING
RETURNING id;

-- get_idempotency_key --
SELECT request_hash, task_ids FROM queueapp_idempotency WHERE api_key_id = %(api_key_id)s AND key = %(key)s;

-- set_idempotency_tasks --
UPDATE queueapp_idempotency SET task_ids = %(task_ids)s::bigint[] WHERE id = %(id)s;

-- database_now --
SELECT now();

-- pickup_latency --
-- Seconds from due to start of the latest 2,000 first attempts finished since a moment
-- (task_finished_idx, newest first): a sample, so a busy window costs no more than a quiet one.
SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY s), percentile_cont(0.95) WITHIN GROUP (ORDER BY s)
FROM (SELECT extract(epoch FROM started_at - run_after) AS s FROM queueapp_task
      WHERE finished_at >= %(since)s AND attempts = 1 AND started_at IS NOT NULL
      ORDER BY finished_at DESC LIMIT 2000) AS recent;

-- finished_per_minute --
-- The console's charts, one row per minute of the window: tasks that succeeded and tasks that
-- failed for good (an index-only count over task_finished_idx, which covers these columns), and the
-- pickup latency (due to start) of first attempts, from the latest 500 of each minute: a sort of
-- every task of a busy hour would take longer than the page may.
WITH minutes AS (
  SELECT generate_series(date_trunc('minute', %(since)s::timestamptz), date_trunc('minute', now()),
                         interval '1 minute') AS minute
)
SELECT minute, counted.successful, counted.failed, sampled.p50, sampled.p95
FROM minutes
CROSS JOIN LATERAL (
  SELECT count(*) FILTER (WHERE status = 'SUCCESSFUL') AS successful,
         count(*) FILTER (WHERE status = 'FAILED') AS failed
  FROM queueapp_task
  WHERE finished_at >= minutes.minute AND finished_at < minutes.minute + interval '1 minute'
) AS counted
CROSS JOIN LATERAL (
  SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY wait) AS p50,
         percentile_cont(0.95) WITHIN GROUP (ORDER BY wait) AS p95
  FROM (SELECT extract(epoch FROM started_at - run_after) AS wait FROM queueapp_task
        WHERE finished_at >= minutes.minute AND finished_at < minutes.minute + interval '1 minute'
          AND attempts = 1 AND started_at IS NOT NULL
        ORDER BY finished_at DESC LIMIT 500) AS latest
) AS sampled
ORDER BY minute;

-- queue_overview --
-- Per queue and status: how many, and for READY the wait of the oldest due task.
SELECT queue_name, status, count(*),
       extract(epoch FROM now() - min(run_after) FILTER (WHERE run_after <= now()))
FROM queueapp_task
GROUP BY queue_name, status
ORDER BY queue_name, status;

-- estimated_rows --
-- The planner's row estimate of a table (kept by autovacuum/ANALYZE): instant, never exact.
SELECT reltuples::bigint FROM pg_class WHERE oid = %(table)s::regclass;

-- purge_finished --
-- Retention: delete up to batch finished tasks (of the given terminal statuses) that finished before
-- the cutoff, oldest first, through task_finished_idx. Small batches keep locks and WAL bursts short.
WITH doomed AS (
  SELECT id FROM queueapp_task
  WHERE finished_at < now() - make_interval(secs => %(older_than)s::float8)
    AND status = ANY(%(statuses)s::text[])
  ORDER BY finished_at
  LIMIT %(batch)s
  FOR UPDATE SKIP LOCKED
)
DELETE FROM queueapp_task t USING doomed WHERE t.id = doomed.id;

-- count_purgeable --
SELECT count(*) FROM queueapp_task
WHERE finished_at < now() - make_interval(secs => %(older_than)s::float8) AND status = ANY(%(statuses)s::text[]);

-- purge_idempotency_keys --
DELETE FROM queueapp_idempotency WHERE created_at < now() - make_interval(secs => %(older_than)s::float8);
