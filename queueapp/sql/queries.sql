-- Every hot-path statement of the queue, one named block each. Only queueapp/store.py runs them.
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
                             enqueued_at, attempts, max_attempts, worker_ids, errors, cancel_requested)
  VALUES (%(task_path)s, %(queue_name)s, %(priority)s, 'READY', %(args)s::jsonb, %(kwargs)s::jsonb,
          coalesce(%(run_after)s::timestamptz, now()), now(), 0, %(max_attempts)s, '{}', '[]', false)
  RETURNING *
)
SELECT id, task_path, queue_name, priority, status, args, kwargs, run_after, enqueued_at,
       started_at, finished_at, attempts, max_attempts, worker_id, worker_ids, errors,
       return_value, cancel_requested,
       CASE WHEN run_after <= now() THEN pg_notify('taskqueue', queue_name) END
FROM inserted;

-- enqueue_tasks --
-- One INSERT for a whole batch, rows given as one JSON array. Identity ids are drawn in the
-- order rows are inserted, which follows the ORDER BY, so rows sorted by id match the input order.
INSERT INTO queueapp_task (task_path, queue_name, priority, status, args, kwargs, run_after,
                           enqueued_at, attempts, max_attempts, worker_ids, errors, cancel_requested)
SELECT r.task_path, r.queue_name, r.priority, 'READY', r.args, r.kwargs,
       coalesce(r.run_after, now()), now(), 0, r.max_attempts, '{}', '[]', false
FROM ROWS FROM (jsonb_to_recordset(%(rows)s::jsonb)
       AS (task_path text, queue_name text, priority int, args jsonb, kwargs jsonb,
           run_after timestamptz, max_attempts int)) WITH ORDINALITY
     AS r(task_path, queue_name, priority, args, kwargs, run_after, max_attempts, ordinality)
ORDER BY r.ordinality
RETURNING id, task_path, queue_name, priority, status, args, kwargs, run_after, enqueued_at,
          started_at, finished_at, attempts, max_attempts, worker_id, worker_ids, errors,
          return_value, cancel_requested;

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
          t.worker_ids, t.errors, t.return_value, t.cancel_requested;

-- finish_task --
-- Fenced. A cancel requested while the task ran wins: it is recorded CANCELLED, never SUCCESSFUL.
UPDATE queueapp_task
SET status = CASE WHEN cancel_requested THEN 'CANCELLED' ELSE 'SUCCESSFUL' END,
    return_value = CASE WHEN cancel_requested THEN NULL ELSE %(return_value)s::jsonb END,
    finished_at = now()
WHERE id = %(id)s AND status = 'RUNNING' AND worker_id = %(worker_id)s AND attempts = %(attempt)s
RETURNING status;

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
       return_value, cancel_requested
FROM queueapp_task
WHERE id = %(id)s;
