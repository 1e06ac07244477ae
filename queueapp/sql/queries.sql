-- Every hot-path statement of the queue, one named block each. Only queueapp/store/ runs them.
-- Times always come from the database's now(), never from a worker's clock.
-- Every write a worker makes after its claim is fenced on (status, worker_id, attempts): when a
-- reaper or a cancel took the task away, the write matches zero rows and changes nothing.
--
-- Tasks that can still run (SCHEDULED, READY, RUNNING) live in queueapp_task_live, which carries
-- only the indexes of the claim, the stager, the reaper and back pressure. A task that ends moves to
-- queueapp_task_history (partitioned by finished_at) in the statement that records its end: a
-- DELETE ... RETURNING from live feeding an INSERT into history, so that no snapshot sees it twice
-- or not at all. A concurrent statement that meets the deleted row (READ COMMITTED) skips it, as it
-- would skip a row whose status no longer matches. The view queueapp_task shows both, for reads.

-- enqueue_task --
-- The INSERT and its NOTIFY run in the caller's transaction: a rollback enqueues nothing, a
-- commit wakes a listening worker. PostgreSQL folds identical notifications (same channel and
-- payload) within one transaction, so a loop of enqueues still sends one per queue. A task due
-- later is SCHEDULED and wakes nobody: the stager makes it READY (and notifies) when it is due.
-- queueapp_wake_waiters (a function: migration 0008) notifies only while a worker of the queue
-- waits for work (mark_worker_waiting): a transaction that called pg_notify commits under a
-- database-wide lock, one at a time, so with every worker busy producers skip it. %(notify)s is
-- TASKQUEUE["NOTIFY"]: off, nothing notifies and workers poll. Wake one, not all (migration 0013):
-- the payload names one waiting worker picked at random ("<queue> <worker id>"), and only that
-- worker (or an idle sibling under its supervisor) claims.
WITH inserted AS (
  INSERT INTO queueapp_task_live (task_path, queue_name, priority, status, args, kwargs, run_after,
                                  enqueued_at, attempts, max_attempts, timeout, worker_ids, errors, cancel_requested,
                                  concurrency_key)
  SELECT %(task_path)s, %(queue_name)s, %(priority)s,
         CASE WHEN due.run_after > now() THEN 'SCHEDULED' ELSE 'READY' END, %(args)s::jsonb, %(kwargs)s::jsonb,
         due.run_after, now(), 0, %(max_attempts)s, %(timeout)s::float8, '{}', '[]', false, %(concurrency_key)s
  FROM (SELECT coalesce(%(run_after)s::timestamptz, now()) AS run_after) AS due
  RETURNING id, run_after, enqueued_at, queue_name, status
)
SELECT id, run_after, enqueued_at, CASE WHEN status = 'READY' AND %(notify)s THEN queueapp_wake_waiters(queue_name) END
FROM inserted;

-- enqueue_unique_task --
-- enqueue_task for a task with a unique key: the unique index task_live_unique_key keeps one live
-- task per key, and ON CONFLICT makes a taken key insert nothing (no row back) instead of failing,
-- so concurrent enqueues of one key make one row. A key is also held for unique_for seconds after
-- its task finished: a task with the key in history that recent inserts nothing either
-- (task_history_unique_key_idx; unique_for = 0 reads no history).
WITH inserted AS (
  INSERT INTO queueapp_task_live (task_path, queue_name, priority, status, args, kwargs, run_after,
                                  enqueued_at, attempts, max_attempts, timeout, worker_ids, errors, cancel_requested,
                                  unique_key, concurrency_key)
  SELECT %(task_path)s, %(queue_name)s, %(priority)s,
         CASE WHEN due.run_after > now() THEN 'SCHEDULED' ELSE 'READY' END, %(args)s::jsonb, %(kwargs)s::jsonb,
         due.run_after, now(), 0, %(max_attempts)s, %(timeout)s::float8, '{}', '[]', false, %(unique_key)s::text,
         %(concurrency_key)s
  FROM (SELECT coalesce(%(run_after)s::timestamptz, now()) AS run_after) AS due
  WHERE NOT (%(unique_for)s::float8 > 0 AND EXISTS (
    SELECT 1 FROM queueapp_task_history h
    WHERE h.unique_key = %(unique_key)s::text AND h.finished_at > now() - make_interval(secs => %(unique_for)s::float8)))
  ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL DO NOTHING
  RETURNING id, run_after, enqueued_at, queue_name, status
)
SELECT id, run_after, enqueued_at, CASE WHEN status = 'READY' AND %(notify)s THEN queueapp_wake_waiters(queue_name) END
FROM inserted;

-- unique_key_holder --
-- Which task holds a key: the live one, else the latest that finished less than unique_for seconds
-- ago. A new statement, so it sees what committed while enqueue_unique_task waited on the index.
(SELECT id, run_after, enqueued_at FROM queueapp_task_live WHERE unique_key = %(unique_key)s::text)
UNION ALL
(SELECT id, run_after, enqueued_at FROM queueapp_task_history
 WHERE %(unique_for)s::float8 > 0 AND unique_key = %(unique_key)s::text
   AND finished_at > now() - make_interval(secs => %(unique_for)s::float8)
 ORDER BY finished_at DESC LIMIT 1)
LIMIT 1;

-- finished_unique_holder --
-- After enqueue_unique_task inserted: did the key's previous task finish while the insert waited
-- for it (its move to history was not in the insert's snapshot)? Then the key was still held.
SELECT id, run_after, enqueued_at FROM queueapp_task_history
WHERE unique_key = %(unique_key)s::text AND finished_at > now() - make_interval(secs => %(unique_for)s::float8)
ORDER BY finished_at DESC LIMIT 1;

-- withdraw_task --
-- Undo an insert of this transaction (nobody else has seen it).
DELETE FROM queueapp_task_live WHERE id = %(id)s;

-- reserve_task_ids --
-- Bulk enqueue, step 1: ids for n tasks from the table's own identity sequence, and the
-- transaction's clock (now() is fixed within a transaction: the copied rows get exactly what
-- now() would have given them). Ids come in input order, so the rows keep it. The sequence is
-- named as a constant (the id column's, tests/test_project.py checks it): looked up per row
-- through pg_get_serial_sequence() it costs six times as much.
SELECT now(), array(SELECT nextval('queueapp_task_id_seq') FROM generate_series(1, %(n)s::int));

-- copy_tasks --
-- Bulk enqueue, step 2, in the same transaction: the rows themselves, by COPY (no parsing of a
-- VALUES list or a JSON array); store sets each row's status (SCHEDULED when due after the
-- transaction's now()). The caller then notifies each queue that got a READY task.
COPY queueapp_task_live (id, task_path, queue_name, priority, status, args, kwargs, run_after, enqueued_at,
                         attempts, max_attempts, timeout, worker_ids, errors, cancel_requested, concurrency_key)
FROM STDIN;

-- notify_queues --
-- For a batch, per queue: as many waiting workers named as it got READY tasks (there may be fewer
-- waiting; see enqueue_task and migration 0013).
SELECT queueapp_wake_waiters(q, n) FROM unnest(%(queues)s::text[], %(counts)s::int[]) AS batch(q, n);

-- claim_tasks --
-- The CTE is an optimisation fence: as `id IN (SELECT ... LIMIT ... FOR UPDATE)` PostgreSQL may
-- run the subquery more than once and claim more than LIMIT rows. SKIP LOCKED lets concurrent
-- claimers pass each other's locked rows instead of queueing behind them. The ORDER BY matches
-- task_live_claim_idx (partial on READY), so the plan walks the index and stops after LIMIT rows;
-- only due tasks are READY, so no deferred entry lies in its path (run_after <= now() is a guard).
-- queues are the worker's queues without flow control (flow_view): the others are claim_flow_tasks'.
WITH picked AS (
  SELECT id FROM queueapp_task_live
  WHERE status = 'READY' AND queue_name = ANY(%(queues)s::text[]) AND run_after <= now()
    -- A worker already marked LOST (a zombie back from a pause) claims nothing; nor does one whose
    -- flow_view is older than the last flow-control change of these queues (flow_changed), until it
    -- looked again: its queue list may hold a queue paused or limited since. The epochs only grow
    -- (settings rows are never deleted), so their sum moved if any of them did. Both are InitPlans,
    -- read once; a queue without a settings row has none (0).
    AND EXISTS (SELECT 1 FROM queueapp_worker w WHERE w.id = %(worker_id)s::uuid AND w.state = 'ALIVE')
    AND (SELECT coalesce(sum(c.flow_epoch), 0) FROM queueapp_queuecontrol c
         WHERE c.name = ANY(%(queues)s::text[])) = %(flow_epoch)s::bigint
  ORDER BY priority DESC, run_after, id
  LIMIT %(limit)s
  FOR UPDATE SKIP LOCKED
)
UPDATE queueapp_task_live t
SET status = 'RUNNING', worker_id = %(worker_id)s, attempts = t.attempts + 1, started_at = now(),
    worker_ids = array_append(t.worker_ids, %(worker_id)s::uuid)
FROM picked
WHERE t.id = picked.id
-- Only what can differ between claimed tasks comes back (status, worker, result are known).
RETURNING t.id, t.task_path, t.queue_name, t.priority, t.args, t.kwargs, t.run_after, t.enqueued_at,
          t.started_at, t.attempts, t.max_attempts, t.worker_ids, t.errors, t.cancel_requested, t.timeout;

-- mark_worker_waiting --
-- A worker with free slots that found nothing to claim says so, so that enqueues on its queues
-- notify it (queueapp_wake_waiters); it then claims once more. No lost wake-up: an enqueue takes a
-- shared advisory lock per queue until its commit, then reads the marks with a fresh snapshot;
-- this takes the same locks exclusively, without waiting, and marks only when it has them all. So
-- an enqueue either finished before the mark (and the claim after it sees the task), or reads the
-- marks after this commit (and notifies). None taken (an enqueue on the way): no mark, the worker
-- claims again shortly. The worker's own row: a HOT update, on state changes only.
WITH locked AS (
  SELECT bool_and(pg_try_advisory_xact_lock(hashtext('taskqueue.wake'), hashtext(q))) AS all_taken
  FROM unnest(%(queues)s::text[]) AS q
)
UPDATE queueapp_worker w SET waiting = true FROM locked
WHERE locked.all_taken AND w.id = %(worker_id)s::uuid
RETURNING w.id;

-- name_listener --
-- A supervisor's Django connection once it LISTENs for its children (workers.listener): named as a
-- listener's own connection is, so that pg_stat_activity shows which session hears the enqueues.
SET application_name = 'taskqueue-listener';

-- check_connection --
-- A listener's idle connection, checked now and then: a dead socket errors here, and the listener
-- reconnects, instead of waiting for notifications that can never come.
SELECT 1;

-- clear_worker_waiting --
-- Every slot taken: enqueues need not notify this worker (it claims again when a task ends).
UPDATE queueapp_worker SET waiting = false WHERE id = %(worker_id)s::uuid AND waiting;

-- claim_plan --
-- Before the claim, in its transaction. Planner trap: without statistics (a table just filled by a
-- burst, before autovacuum's ANALYZE) or with stale ones (a queue that is usually empty), the planner
-- takes the claim for a few rows and reads every READY task of the queue through
-- task_live_ready_queue_idx, then sorts them: each claim then costs as much as the backlog (measured:
-- 850 tasks/s with 40,000 waiting, 3,000 with none). With sorting priced out, the only plan left is
-- the claim index read in order, which stops after LIMIT rows whatever the statistics say. LOCAL:
-- it ends with the transaction, so it holds behind a pooler too, and it is in force when the claim
-- is planned (custom plans) and when its generic plan is built and cached. The same statement sets
-- the worker's timeouts for the transaction (what limit_transaction does elsewhere; NULL leaves one
-- as it is), first in the round so that they cover its finish (which sorts nothing): a round sends
-- no more statements than before it had them. The values are written in once per worker (store.timeouts), not sent as
-- parameters, and this comment is left out: each cost a round about 2 per cent
-- (bench/round_limits.py). A round that only makes a plain claim (no success recorded, no flow
-- control) commits without waiting for its WAL to reach disk ({synchronous_commit} is 'off' then;
-- otherwise the setting as it is): an idle worker's pickup no longer waits for a flush. What a
-- database crash can cost is a claim no later commit flushed (up to 3 x wal_writer_delay): the task
-- is READY again and may run twice, and the worker that claimed it is fenced out
-- (docs/guarantees.md, "What a crash costs").
SELECT set_config('enable_sort', 'off', true),
       set_config('statement_timeout', coalesce({statement_timeout}, current_setting('statement_timeout')), true),
       set_config('lock_timeout', coalesce({lock_timeout}, current_setting('lock_timeout')), true),
       set_config('idle_in_transaction_session_timeout',
                  coalesce({lock_timeout}, current_setting('idle_in_transaction_session_timeout')), true),
       set_config('synchronous_commit', {synchronous_commit}, true);

-- lock_flow_queues --
-- The flow-controlled claim, step 1: lock the settings rows of the worker's flow-controlled queues,
-- in name order (two workers with overlapping queues cannot deadlock). Claimers of a queue take
-- turns here, and each runs step 2 as a new statement after the previous one committed: under READ
-- COMMITTED its snapshot then sees every task the previous claimer made RUNNING, so counts of
-- RUNNING tasks and the token bucket cannot be read stale by two workers at once. Counting in the
-- statement that waited for the lock would not do: its snapshot predates the wait.
-- The rate is the fastest of the queue's and its keys' (greatest skips a NULL): a worker that was
-- held back polls again when such a token is due. (The view was made before the rate per key: its
-- columns come from the table.)
SELECT q.name, q.paused, greatest(q.rate_limit / q.rate_period, q.key_rate_limit / q.key_rate_period),
       q.breaker_threshold IS NOT NULL
FROM queueapp_queuecontrol q JOIN queueapp_flow_queue f ON f.name = q.name
WHERE q.name = ANY(%(queues)s::text[])
ORDER BY q.name
FOR UPDATE OF q;

-- claim_flow_tasks --
-- The flow-controlled claim, step 2, in the transaction of step 1. Per unpaused queue, the free
-- slots of the view queueapp_flow_slot (migration 0009: concurrency limit, breaker, tokens). Keys
-- at their limit are filtered out in the scan itself, so tasks behind them are reached (no
-- head-of-line blocking); the window functions then keep each queue and each key within what is
-- left. No FOR UPDATE: window functions forbid it, and the lock of step 1 keeps other flow
-- claimers of these queues out; the UPDATE re-checks on the row's latest version that it is still
-- unclaimed (a task cancelled meanwhile is gone and skipped). started_at is statement_timestamp(): the time of this
-- claim, after the lock (a rate limit is judged on it).
-- A rate limit per key (key_rate_limit per key_rate_period) is a token bucket per key in
-- queueapp_keybucket (no row: full), refilled like the queue's, at most 100 ms of tokens, never
-- less than one: keys out of tokens are left out of the scan, as keys at their concurrency limit
-- are, and a key takes at most its whole tokens. Only this claim writes the buckets of a queue,
-- under the queue's lock.
WITH slots AS (
  SELECT f.name, f.key_concurrency, f.rated, f.trying, f.tokens, least(f.free, %(limit)s::int) AS free,
         q.key_rate_limit / q.key_rate_period AS key_rate,
         greatest(1, q.key_rate_limit / q.key_rate_period * 0.1) AS key_burst
  FROM queueapp_flow_slot f JOIN queueapp_queuecontrol q ON q.name = f.name
  WHERE f.name = ANY(%(queues)s::text[])
),
busy_keys AS (
  SELECT r.queue_name, r.concurrency_key, count(*) AS running
  FROM queueapp_task_live r
  WHERE r.status = 'RUNNING' AND r.queue_name = ANY(%(queues)s::text[]) AND r.concurrency_key IS NOT NULL
  GROUP BY r.queue_name, r.concurrency_key
),
candidates AS (
  SELECT t.id, t.queue_name, t.concurrency_key, t.priority, t.run_after
  FROM queueapp_task_live t
  WHERE t.status = 'READY' AND t.run_after <= now()
    AND t.queue_name = ANY (ARRAY(SELECT name FROM slots WHERE free > 0))
    AND NOT EXISTS (SELECT 1 FROM busy_keys b JOIN slots s ON s.name = b.queue_name
                    WHERE b.queue_name = t.queue_name AND b.concurrency_key = t.concurrency_key
                      AND b.running >= s.key_concurrency)
    AND NOT EXISTS (SELECT 1 FROM queueapp_keybucket kb JOIN slots s ON s.name = kb.queue_name
                    WHERE kb.queue_name = t.queue_name AND kb.concurrency_key = t.concurrency_key
                      AND kb.tokens + s.key_rate * extract(epoch FROM statement_timestamp() - kb.tokens_at) < 1)
    AND EXISTS (SELECT 1 FROM queueapp_worker w WHERE w.id = %(worker_id)s::uuid AND w.state = 'ALIVE')
  ORDER BY t.priority DESC, t.run_after, t.id
  LIMIT %(limit)s * 4
),
key_tokens AS (
  SELECT kb.queue_name, kb.concurrency_key,
         least(s.key_burst, kb.tokens + s.key_rate * extract(epoch FROM statement_timestamp() - kb.tokens_at))
           AS tokens
  FROM queueapp_keybucket kb JOIN slots s ON s.name = kb.queue_name
  WHERE s.key_rate IS NOT NULL
    AND (kb.queue_name, kb.concurrency_key) IN (SELECT queue_name, concurrency_key FROM candidates)
),
by_key AS (
  SELECT c.*, row_number() OVER (PARTITION BY c.queue_name, c.concurrency_key
                                 ORDER BY c.priority DESC, c.run_after, c.id) AS nth_of_key
  FROM candidates c
),
keys_allowed AS (
  SELECT k.* FROM by_key k JOIN slots s ON s.name = k.queue_name
  LEFT JOIN busy_keys b ON b.queue_name = k.queue_name AND b.concurrency_key = k.concurrency_key
  LEFT JOIN key_tokens kt ON kt.queue_name = k.queue_name AND kt.concurrency_key = k.concurrency_key
  WHERE k.concurrency_key IS NULL
     OR (k.nth_of_key <= s.key_concurrency - coalesce(b.running, 0)
         AND (s.key_rate IS NULL OR k.nth_of_key <= floor(coalesce(kt.tokens, s.key_burst))))
),
picked AS (
  SELECT a.id FROM (
    SELECT k.*, row_number() OVER (PARTITION BY k.queue_name ORDER BY k.priority DESC, k.run_after, k.id)
                AS nth_of_queue
    FROM keys_allowed k
  ) AS a JOIN slots s ON s.name = a.queue_name
  WHERE a.nth_of_queue <= s.free
  ORDER BY a.priority DESC, a.run_after, a.id
  LIMIT %(limit)s
),
claimed AS (
  UPDATE queueapp_task_live t
  SET status = 'RUNNING', worker_id = %(worker_id)s, attempts = t.attempts + 1, started_at = statement_timestamp(),
      worker_ids = array_append(t.worker_ids, %(worker_id)s::uuid)
  -- The picked ids (an InitPlan), looked up by primary key. Still unclaimed is checked as
  -- worker_id IS NULL, which READ COMMITTED re-checks on the row's latest version (a READY task has
  -- no worker, a RUNNING one has; nothing turns a READY task SCHEDULED). Planner trap: with
  -- status = 'READY' here, the UPDATE read every READY task of the queue through the partial
  -- queue index instead (1 to 2 s at 2,000 READY tasks).
  WHERE t.id = ANY (ARRAY(SELECT id FROM picked)) AND t.worker_id IS NULL
  RETURNING t.id, t.task_path, t.queue_name, t.priority, t.args, t.kwargs, t.run_after, t.enqueued_at,
            t.started_at, t.attempts, t.max_attempts, t.worker_ids, t.errors, t.cancel_requested, t.timeout
),
spent AS (
  UPDATE queueapp_queuecontrol q
  SET tokens = CASE WHEN s.rated THEN s.tokens - n.claimed ELSE q.tokens END,
      tokens_at = CASE WHEN s.rated THEN statement_timestamp() ELSE q.tokens_at END,
      -- a half-open breaker's trial is out: the next one waits for its outcome or a cool-off
      breaker_until = CASE WHEN s.trying AND n.claimed > 0
                           THEN statement_timestamp() + make_interval(secs => q.breaker_cooloff)
                           ELSE q.breaker_until END
  FROM slots s CROSS JOIN LATERAL (SELECT count(*) AS claimed FROM claimed c WHERE c.queue_name = s.name) AS n
  WHERE q.name = s.name AND (s.rated OR s.trying)
),
key_spent AS (
  INSERT INTO queueapp_keybucket AS kb (queue_name, concurrency_key, tokens, tokens_at)
  SELECT k.queue_name, k.concurrency_key, coalesce(kt.tokens, s.key_burst) - count(*), statement_timestamp()
  FROM claimed c JOIN keys_allowed k ON k.id = c.id JOIN slots s ON s.name = k.queue_name
  LEFT JOIN key_tokens kt ON kt.queue_name = k.queue_name AND kt.concurrency_key = k.concurrency_key
  WHERE k.concurrency_key IS NOT NULL AND s.key_rate IS NOT NULL
  GROUP BY k.queue_name, k.concurrency_key, kt.tokens, s.key_burst
  ON CONFLICT (queue_name, concurrency_key) DO UPDATE SET tokens = excluded.tokens, tokens_at = excluded.tokens_at
)
SELECT * FROM claimed;

-- claim_flow_queue --
-- claim_flow_tasks for the commonest case, one flow-controlled queue and no concurrency keys in it,
-- in the transaction of lock_flow_queues: the same free slots and tokens, then the plain claim's
-- scan with its LIMIT cut to them, which needs no window function, so it can lock with SKIP LOCKED
-- and is a third cheaper to plan and run (docs/benchmarks.md). Tasks with a key are left out:
-- a worker whose look at the settings is older than the queue's first keyed task leaves them to
-- claim_flow_tasks, which it uses from its next look on.
WITH slot AS (
  SELECT name, rated, trying, tokens, least(free, %(limit)s::int) AS free
  FROM queueapp_flow_slot
  WHERE name = %(queue)s
),
picked AS (
  SELECT id FROM queueapp_task_live
  WHERE status = 'READY' AND queue_name = %(queue)s AND run_after <= now() AND concurrency_key IS NULL
    AND EXISTS (SELECT 1 FROM queueapp_worker w WHERE w.id = %(worker_id)s::uuid AND w.state = 'ALIVE')
  ORDER BY priority DESC, run_after, id
  -- No row (the queue is paused, or no longer flow-controlled): no slot. A NULL LIMIT would be none.
  LIMIT coalesce((SELECT free FROM slot), 0)
  FOR UPDATE SKIP LOCKED
),
claimed AS (
  UPDATE queueapp_task_live t
  SET status = 'RUNNING', worker_id = %(worker_id)s, attempts = t.attempts + 1, started_at = statement_timestamp(),
      worker_ids = array_append(t.worker_ids, %(worker_id)s::uuid)
  -- Planner trap: joined to picked, whose LIMIT it cannot estimate, the UPDATE hashed the whole table.
  WHERE t.id = ANY (ARRAY(SELECT id FROM picked))
  RETURNING t.id, t.task_path, t.queue_name, t.priority, t.args, t.kwargs, t.run_after, t.enqueued_at,
            t.started_at, t.attempts, t.max_attempts, t.worker_ids, t.errors, t.cancel_requested, t.timeout
),
spent AS (
  UPDATE queueapp_queuecontrol q
  SET tokens = CASE WHEN s.rated THEN s.tokens - (SELECT count(*) FROM claimed) ELSE q.tokens END,
      tokens_at = CASE WHEN s.rated THEN statement_timestamp() ELSE q.tokens_at END,
      breaker_until = CASE WHEN s.trying AND EXISTS (SELECT FROM claimed)
                           THEN statement_timestamp() + make_interval(secs => q.breaker_cooloff)
                           ELSE q.breaker_until END
  FROM slot s
  WHERE q.name = s.name AND (s.rated OR s.trying)
)
SELECT * FROM claimed;

-- flow_view --
-- A worker's view of flow control, in one snapshot: the flow epoch of its queues without flow
-- control (claim_tasks, given those, checks it), which of its queues are flow-controlled, which of
-- those have keyed tasks, and which a breaker. Its listener asks on connecting, when told of a
-- change of settings, and every few seconds, so that rounds of a worker without any pay nothing.
SELECT (SELECT coalesce(sum(c.flow_epoch), 0) FROM queueapp_queuecontrol c
        WHERE c.name = ANY(%(queues)s::text[])
          AND NOT EXISTS (SELECT 1 FROM queueapp_flow_queue f WHERE f.name = c.name)),
       ARRAY(SELECT name FROM queueapp_flow_queue WHERE name = ANY(%(queues)s::text[])),
       ARRAY(SELECT name FROM queueapp_flow_queue WHERE name = ANY(%(queues)s::text[]) AND has_keys),
       ARRAY(SELECT name FROM queueapp_flow_queue WHERE name = ANY(%(queues)s::text[]) AND breaker_threshold IS NOT NULL);

-- step_breakers --
-- The flow-controlled claim, between steps 1 and 2, under the same locks: each circuit breaker of
-- the worker's queues moves on. Closed -> open when at least breaker_min_attempts attempts ended in
-- the window and the failed share reached the threshold; open -> half-open when the cool-off is
-- over (the claim then lets one trial task through); half-open -> closed on a success since it
-- turned half-open (the window starts afresh), -> open again on a failure. Outcomes older than
-- the window are deleted here. The changes come back for the worker to log.
WITH seen AS (
  SELECT q.name, q.breaker_state AS state, q.breaker_threshold AS threshold, q.breaker_min_attempts,
         q.breaker_cooloff, q.breaker_until,
         count(e.id) FILTER (WHERE e.at >= statement_timestamp() - make_interval(secs => q.breaker_window))
           AS attempts,
         count(e.id) FILTER (WHERE e.failed AND e.at >= statement_timestamp() - make_interval(secs => q.breaker_window))
           AS failures,
         bool_or(NOT e.failed AND e.at >= q.breaker_changed_at) AS trial_succeeded,
         bool_or(e.failed AND e.at >= q.breaker_changed_at) AS trial_failed
  FROM queueapp_queuecontrol q
  LEFT JOIN queueapp_breakerevent e ON e.queue_name = q.name
  WHERE q.name = ANY(%(queues)s::text[]) AND q.breaker_threshold IS NOT NULL
  GROUP BY q.name
),
next AS (
  SELECT *, CASE
      WHEN state = 'closed' AND attempts >= breaker_min_attempts AND failures >= threshold * attempts THEN 'open'
      WHEN state = 'open' AND breaker_until <= statement_timestamp() THEN 'half_open'
      WHEN state = 'half_open' AND trial_succeeded THEN 'closed'
      WHEN state = 'half_open' AND trial_failed THEN 'open'
      ELSE state END AS new_state
  FROM seen
),
changed AS (
  UPDATE queueapp_queuecontrol q
  SET breaker_state = n.new_state, breaker_changed_at = statement_timestamp(),
      breaker_until = CASE n.new_state WHEN 'open' THEN statement_timestamp() + make_interval(secs => n.breaker_cooloff)
                                       WHEN 'half_open' THEN statement_timestamp() END
  FROM next n
  WHERE q.name = n.name AND n.new_state <> n.state
  RETURNING q.name, q.breaker_state, n.failures, n.attempts
),
purged AS (
  DELETE FROM queueapp_breakerevent e USING queueapp_queuecontrol q
  WHERE e.queue_name = q.name AND q.name = ANY(%(queues)s::text[]) AND q.breaker_threshold IS NOT NULL
    AND (e.at < statement_timestamp() - make_interval(secs => q.breaker_window)
         OR q.name IN (SELECT name FROM changed WHERE breaker_state = 'closed'))
)
SELECT name, breaker_state, failures, attempts FROM changed;

-- flow_plan --
-- Before the flow-controlled claim, after claim_plan, for this transaction only. Planner trap: its
-- window functions must sort, and with sorting priced out (claim_plan) the plan's cost passes
-- jit_above_cost: compiling it took a second per claim. And the generic plan, kept with the
-- prepared statement: the plan cache took a custom plan for claim_flow_tasks every time (its
-- generic plan is estimated no cheaper), and planning it afresh was 0.6 of its 1.0 ms; its generic
-- plan walks the claim index and stops at its LIMIT, as the custom one does (docs/benchmarks.md).
-- plain_plan undoes it before a plain claim in the same transaction.
SELECT set_config('jit', 'off', true), set_config('plan_cache_mode', 'force_generic_plan', true);

-- plain_plan --
-- After the flow-controlled claim, before a plain claim in the same round: the plain claim's
-- generic plan cannot know how few rows its LIMIT takes (it was 10x slower), so it goes back to
-- the plan cache's choice (custom plans).
SET LOCAL plan_cache_mode TO DEFAULT;

-- ensure_keyed_queues --
-- Tasks with a concurrency key need the flow-controlled claim: the first one enqueued in a queue
-- marks it (the caller then runs flow_changed). The queue's row is only written, and so only
-- locked, when it is not marked yet: later enqueues read it and pass.
INSERT INTO queueapp_queuecontrol AS q (name, paused, key_concurrency, rate_period, has_keys, tokens, updated_at)
SELECT k.queue, false, 1, 1.0, true, 0, now() FROM unnest(%(queues)s::text[]) AS k(queue)
WHERE NOT EXISTS (SELECT 1 FROM queueapp_queuecontrol s WHERE s.name = k.queue AND s.has_keys)
ON CONFLICT (name) DO UPDATE SET has_keys = true, updated_at = now()
RETURNING q.name;

-- flow_changed --
-- Queues' flow control changed (pause, resume, limits, a first keyed task), in the transaction of
-- the change, which has written (so locked) their settings rows already. Their flow_epoch moves:
-- from the commit on, the plain claim of a worker on one of them (which compares the epochs of its
-- queues with its view's) claims nothing until the worker has looked at the settings again
-- (flow_view), so that no worker claims a queue as plain after it was paused or limited, whatever
-- its listener has heard yet. Only settings rows are written: an admin's or an enqueuer's
-- transaction left open holds no worker row (their heartbeats would wait behind it). Then workers
-- are told, on a channel of its own (the many enqueue notifications do not make every worker
-- re-read settings), and woken (a resumed queue is claimed at once).
WITH moved AS (
  UPDATE queueapp_queuecontrol SET flow_epoch = flow_epoch + 1 WHERE name = ANY(%(queues)s::text[])
)
SELECT pg_notify('taskqueue_settings', q), pg_notify('taskqueue', q) FROM unnest(%(queues)s::text[]) AS q;

-- set_paused --
-- Pause or resume (then flow_changed): the row is made if the queue had none. Paused queues are
-- flow-controlled; claim_flow_tasks skips them.
INSERT INTO queueapp_queuecontrol AS q (name, paused, key_concurrency, rate_period, has_keys, tokens, updated_at)
VALUES (%(queue)s, %(paused)s, 1, 1.0, false, 0, now())
ON CONFLICT (name) DO UPDATE SET paused = %(paused)s, updated_at = now();

-- why_waiting --
-- What holds one READY or SCHEDULED task: the figures the console and the API turn into reasons.
SELECT t.status, t.run_after > now() AS not_due, t.queue_name AS queue, t.concurrency_key AS key,
       coalesce(q.paused, false) AS paused, q.breaker_state AS breaker, q.concurrency_limit AS queue_limit,
       (SELECT count(*) FROM queueapp_task_live r
        WHERE r.status = 'RUNNING' AND r.queue_name = t.queue_name) AS queue_running,
       coalesce(q.key_concurrency, 1) AS key_limit,
       (SELECT count(*) FROM queueapp_task_live r
        WHERE r.status = 'RUNNING' AND r.queue_name = t.queue_name AND r.concurrency_key = t.concurrency_key)
         AS key_running,
       q.key_rate_limit, q.key_rate_period,
       (SELECT least(greatest(1, q.key_rate_limit / q.key_rate_period * 0.1),
                     kb.tokens + q.key_rate_limit / q.key_rate_period * extract(epoch FROM now() - kb.tokens_at))
        FROM queueapp_keybucket kb
        WHERE kb.queue_name = t.queue_name AND kb.concurrency_key = t.concurrency_key) AS key_tokens,
       q.rate_limit, q.rate_period,
       CASE WHEN q.rate_limit IS NULL OR q.tokens_at IS NULL THEN NULL
            ELSE least(greatest(1, q.rate_limit / q.rate_period * 0.1),
                       q.tokens + q.rate_limit / q.rate_period * extract(epoch FROM now() - q.tokens_at)) END
         AS tokens,
       (SELECT count(*) FROM queueapp_task_live a
        WHERE a.status = 'READY' AND a.queue_name = t.queue_name
          AND (a.priority, -extract(epoch FROM a.run_after), -a.id)
              > (t.priority, -extract(epoch FROM t.run_after), -t.id)) AS ahead,
       (SELECT count(*) FROM queueapp_worker w
        WHERE w.state = 'ALIVE' AND t.queue_name = ANY(w.queues)
          AND w.last_heartbeat_at >= now() - make_interval(secs => %(stale_after)s::float8)) AS listeners
FROM queueapp_task_live t
LEFT JOIN queueapp_queuecontrol q ON q.name = t.queue_name
WHERE t.id = %(id)s;

-- queue_flow --
-- The Queues page: per queue with live tasks or settings, its settings and figures. READY due and
-- deferred (SCHEDULED), RUNNING, started in the last minute (live tasks by started_at, finished ones
-- from history), and the wait of the oldest READY task.
WITH names AS (
  SELECT name FROM queueapp_queuecontrol
  UNION
  SELECT DISTINCT queue_name FROM queueapp_task_live
)
SELECT n.name, coalesce(q.paused, false), q.concurrency_limit, coalesce(q.key_concurrency, 1),
       q.rate_limit, coalesce(q.rate_period, 1.0),
       live.ready, live.scheduled, live.running, live.started_live + finished.started, live.oldest_ready,
       q.breaker_threshold, coalesce(q.breaker_state, 'closed'), q.key_rate_limit, coalesce(q.key_rate_period, 1.0)
FROM names n
LEFT JOIN queueapp_queuecontrol q ON q.name = n.name
CROSS JOIN LATERAL (
  SELECT count(*) FILTER (WHERE status = 'READY') AS ready,
         count(*) FILTER (WHERE status = 'SCHEDULED') AS scheduled,
         count(*) FILTER (WHERE status = 'RUNNING') AS running,
         count(*) FILTER (WHERE status = 'RUNNING' AND started_at >= now() - interval '1 minute') AS started_live,
         extract(epoch FROM now() - min(run_after) FILTER (WHERE status = 'READY')) AS oldest_ready
  FROM queueapp_task_live WHERE queue_name = n.name
) AS live
CROSS JOIN LATERAL (
  SELECT count(*) AS started FROM queueapp_task_history
  WHERE queue_name = n.name AND finished_at >= now() - interval '1 minute'
    AND started_at >= now() - interval '1 minute'
) AS finished
ORDER BY n.name;

-- release_unknown_claims --
-- After a round whose outcome is unknown (the connection broke before its COMMIT's answer came
-- back) the claim in it may have committed: tasks RUNNING under this worker that it does not hold
-- in memory were claimed by that round and never started. They go back to READY, the attempt not
-- counted, as at shutdown. Nothing else claims for this worker, so nothing else is in that set.
UPDATE queueapp_task_live t
SET status = 'READY', worker_id = NULL, attempts = t.attempts - 1, started_at = NULL,
    worker_ids = t.worker_ids[1:cardinality(t.worker_ids) - 1]
WHERE t.status = 'RUNNING' AND t.worker_id = %(worker_id)s::uuid AND NOT (t.id = ANY(%(held)s::bigint[]))
RETURNING t.id;

-- recorded_successes --
-- The same uncertainty for the successes sent in that round: those this attempt already recorded
-- (moved to history under this worker and attempt). Only this worker's own finish does that.
SELECT t.id, t.status
FROM queueapp_task_history t
JOIN unnest(%(ids)s::bigint[], %(attempts)s::int[]) AS r(id, attempt) ON t.id = r.id
WHERE t.worker_id = %(worker_id)s::uuid AND t.attempts = r.attempt AND t.status IN ('SUCCESSFUL', 'CANCELLED');

-- finish_tasks --
-- Fenced, for a whole batch: every (id, attempt, return value) that still belongs to this worker
-- and attempt moves to history; a task taken away meanwhile matches nothing and is left out of
-- RETURNING. A cancel requested while the task ran wins: it is recorded CANCELLED, never SUCCESSFUL.
-- Planner trap: joined to unnest(ids, attempts, return values), the generic plan drives from the
-- worker's RUNNING tasks and runs the unnest again for each of them (a batch of 100 made 10,000
-- rows and took 5 ms); each task's attempt and return value are looked up by its position in the
-- arrays instead, in C, with no join to plan. The return values come as one JSON array (parsed
-- once; an element is read by its index).
-- A queue with a circuit breaker counts each success (a semi-join on the few rows of queue
-- settings with a breaker: the other queues pay for one hashed lookup per batch).
WITH done AS (
  DELETE FROM queueapp_task_live t
  WHERE t.id = ANY(%(ids)s::bigint[]) AND t.status = 'RUNNING' AND t.worker_id = %(worker_id)s::uuid
    AND t.attempts = (%(attempts)s::int[])[array_position(%(ids)s::bigint[], t.id)]
  RETURNING t.*
)
INSERT INTO queueapp_task_history (id, task_path, queue_name, priority, status, args, kwargs, run_after,
                                   enqueued_at, started_at, finished_at, attempts, max_attempts, worker_ids,
                                   errors, return_value, timeout, cancel_requested, worker_id, unique_key, concurrency_key)
SELECT id, task_path, queue_name, priority, CASE WHEN cancel_requested THEN 'CANCELLED' ELSE 'SUCCESSFUL' END,
       args, kwargs, run_after, enqueued_at, started_at, now(), attempts, max_attempts, worker_ids, errors,
       CASE WHEN cancel_requested THEN NULL
            ELSE %(return_values)s::jsonb -> (array_position(%(ids)s::bigint[], id) - 1) END,
       timeout, cancel_requested, worker_id, unique_key, concurrency_key
FROM done
RETURNING id, status;

-- count_breaker_successes --
-- After finish_tasks, in its transaction, for a worker whose flow view has queues with a circuit
-- breaker (workers without any run finish_tasks alone): each success of such a queue is an outcome
-- for its breaker. The rows just moved are those with finished_at = now() (the transaction's time:
-- one partition).
INSERT INTO queueapp_breakerevent (queue_name, at, failed)
SELECT h.queue_name, now(), false FROM queueapp_task_history h
WHERE h.finished_at = now() AND h.id = ANY(%(ids)s::bigint[]) AND h.status = 'SUCCESSFUL'
  AND h.queue_name IN (SELECT name FROM queueapp_queuecontrol WHERE breaker_threshold IS NOT NULL);

-- fail_task --
-- Fenced. Appends the attempt's error, then: SCHEDULED for a retry after an exponential backoff
-- with jitter (from the database clock) while attempts remain, else the task ends in history,
-- FAILED, or CANCELLED if a cancel was requested. The row is locked first (a cancel or the reaper
-- waits, or is waited for and re-read), and which branch it takes is decided once, from that row.
WITH failed AS (
  SELECT id, queue_name, NOT cancel_requested AND attempts < max_attempts AS retry,
         jsonb_build_array(%(error)s::jsonb) AS error
  FROM queueapp_task_live
  WHERE id = %(id)s AND status = 'RUNNING' AND worker_id = %(worker_id)s AND attempts = %(attempt)s
  FOR UPDATE
),
retried AS (
  UPDATE queueapp_task_live t
  SET status = 'SCHEDULED', errors = t.errors || failed.error, worker_id = NULL,
      run_after = now() + make_interval(secs => least(%(backoff_max)s::float8,
                  %(backoff_base)s::float8 * power(2, least(t.attempts - t.retried_at_attempt - 1, 60))) * (0.5 + random() / 2))
  FROM failed
  WHERE t.id = failed.id AND failed.retry
  RETURNING t.status, t.run_after, t.queue_name
),
ended AS (
  DELETE FROM queueapp_task_live t USING failed WHERE t.id = failed.id AND NOT failed.retry
  RETURNING t.*, failed.error
),
moved AS (
  INSERT INTO queueapp_task_history (id, task_path, queue_name, priority, status, args, kwargs, run_after,
                                     enqueued_at, started_at, finished_at, attempts, max_attempts, worker_ids,
                                     errors, return_value, timeout, cancel_requested, worker_id, unique_key, concurrency_key)
  SELECT id, task_path, queue_name, priority, CASE WHEN cancel_requested THEN 'CANCELLED' ELSE 'FAILED' END,
         args, kwargs, run_after, enqueued_at, started_at, now(), attempts, max_attempts, worker_ids,
         errors || error, NULL, timeout, cancel_requested, worker_id, unique_key, concurrency_key
  FROM ended
  RETURNING status, run_after, queue_name
)
SELECT status, run_after, queue_name FROM retried
UNION ALL
SELECT status, run_after, queue_name FROM moved;

-- count_breaker_failure --
-- After fail_task, in its transaction, when the task's queue had a circuit breaker as the worker
-- last looked (fail_task alone for the other queues, which so pay nothing for breakers): the failed
-- attempt is an outcome for the breaker, if the queue still has one.
INSERT INTO queueapp_breakerevent (queue_name, at, failed)
SELECT name, now(), true FROM queueapp_queuecontrol
WHERE name = %(queue)s AND breaker_threshold IS NOT NULL;

-- cancel_task --
-- SCHEDULED and READY tasks end at once (CANCELLED, in history); a RUNNING one gets a request that
-- the task can poll and that stops its result from being recorded as SUCCESSFUL. Finished tasks
-- are not in the live table: no row comes back.
WITH target AS (
  SELECT id, status = 'RUNNING' AS running FROM queueapp_task_live WHERE id = %(id)s FOR UPDATE
),
requested AS (
  UPDATE queueapp_task_live t SET cancel_requested = true
  FROM target WHERE t.id = target.id AND target.running
  RETURNING t.status
),
ended AS (
  DELETE FROM queueapp_task_live t USING target WHERE t.id = target.id AND NOT target.running
  RETURNING t.*
),
moved AS (
  INSERT INTO queueapp_task_history (id, task_path, queue_name, priority, status, args, kwargs, run_after,
                                     enqueued_at, started_at, finished_at, attempts, max_attempts, worker_ids,
                                     errors, return_value, timeout, cancel_requested, worker_id, unique_key, concurrency_key)
  SELECT id, task_path, queue_name, priority, 'CANCELLED', args, kwargs, run_after, enqueued_at, started_at,
         now(), attempts, max_attempts, worker_ids, errors, NULL, timeout, true, worker_id, unique_key, concurrency_key
  FROM ended
  RETURNING status
)
SELECT status FROM requested
UNION ALL
SELECT status FROM moved;

-- get_task --
-- Through the view: the live table's primary key, then each history partition's id index.
SELECT id, task_path, queue_name, priority, status, args, kwargs, run_after, enqueued_at,
       started_at, finished_at, attempts, max_attempts, worker_id, worker_ids, errors,
       return_value, cancel_requested, timeout, unique_key
FROM queueapp_task
WHERE id = %(id)s;

-- limit_transaction --
-- First in every transaction of a worker's own connections (not its task threads', whose queries
-- are the tasks' business): no statement of the queue runs, and none waits for a lock, longer than a
-- worker may go without a heartbeat. LOCAL (true): it ends with the transaction, so behind a pooler
-- in transaction mode the next client of the server session does not inherit it (a session SET
-- would stay; a startup `options` PgBouncer refuses). statement_timeout is read as each later
-- statement starts, lock_timeout as each lock wait starts: both hold for the rest of the transaction.
-- idle_in_transaction_session_timeout (the lock timeout's value): a worker cut off between two
-- statements of a transaction (a Django atomic block is a round trip each) leaves its server session
-- idle in it, holding its locks (its worker row: every reaper of the fleet would wait on it) until
-- the server hears of the dead peer, hours later; the server ends such a session instead.
SELECT set_config('statement_timeout', {statement_timeout}, true),
       set_config('lock_timeout', {lock_timeout}, true),
       set_config('idle_in_transaction_session_timeout', {lock_timeout}, true);

-- limit_session --
-- limit_transaction's limits for the whole session, set once as a worker's connection opens, when it
-- goes straight to PostgreSQL (no pooler: the server session is this connection's alone and ends with
-- it). Its statements then need no transaction of their own: one round trip each instead of four.
SELECT set_config('statement_timeout', {statement_timeout}, false),
       set_config('lock_timeout', {lock_timeout}, false),
       set_config('idle_in_transaction_session_timeout', {lock_timeout}, false);

-- is_cancel_requested --
SELECT cancel_requested FROM queueapp_task WHERE id = %(id)s;

-- release_tasks --
-- Shutdown: hand back tasks that were claimed but never started. The attempt was not used, so
-- attempts and worker_ids go back to what they were. Fenced like every worker write.
UPDATE queueapp_task_live t
SET status = 'READY', worker_id = NULL, attempts = t.attempts - 1, started_at = NULL,
    worker_ids = t.worker_ids[1:cardinality(t.worker_ids) - 1]
FROM unnest(%(ids)s::bigint[], %(attempts)s::int[]) AS r(id, attempt)
WHERE t.id = r.id AND t.attempts = r.attempt AND t.status = 'RUNNING' AND t.worker_id = %(worker_id)s
RETURNING t.id;

-- register_worker --
INSERT INTO queueapp_worker (id, hostname, pid, queues, concurrency, state, started_at, last_heartbeat_at,
                             wake_channel)
VALUES (%(id)s, %(hostname)s, %(pid)s, %(queues)s::varchar[], %(concurrency)s, 'ALIVE', now(), now(),
        %(wake_channel)s);

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
-- a LOST worker: SCHEDULED after a backoff while attempts remain (the lost attempt counts, so a
-- task that kills its worker cannot do it forever), else it ends in history, FAILED, or CANCELLED
-- if a cancel was requested.
-- Tasks are joined to workers LOST before this statement too: a claim that committed while the
-- worker was being marked LOST is picked up by the next run; and to STOPPED ones, whose process has
-- ended: a task it still held (its loop died on an error, or a shutdown write failed) has no one
-- else to take it back. The backoff's exponent stops at 60 (2^1024 would overflow float8 and fail
-- the statement, and every reap with it, for a task retried a thousand times).
-- `taken` locks each task on its latest row version (READ COMMITTED): a task that finished an
-- instant earlier has left the live table and is skipped, so it stays SUCCESSFUL or FAILED.
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
  SELECT w.id FROM queueapp_worker w, reaper WHERE reaper.locked AND w.state IN ('LOST', 'STOPPED')
),
taken AS (
  SELECT t.id, t.queue_name, NOT t.cancel_requested AND t.attempts < t.max_attempts AS retry,
         jsonb_build_array(jsonb_build_object(
           'exception_class_path', 'queueapp.exceptions.WorkerLost',
           'message', 'worker ' || t.worker_id || ' was lost (no heartbeat, or its process died) during attempt '
                      || t.attempts,
           'traceback', '', 'attempt', t.attempts, 'worker_id', t.worker_id)) AS error
  FROM queueapp_task_live t
  WHERE t.status = 'RUNNING' AND t.worker_id IN (SELECT id FROM orphaned)
  FOR UPDATE OF t
),
-- An attempt lost with its worker is a failed attempt for its queue's circuit breaker (a worker
-- that a task's downstream kills or hangs must open it as a raised error would). Reaps are rare:
-- the semi-join on the settings costs here, not on the claim or the finish.
counted AS (
  INSERT INTO queueapp_breakerevent (queue_name, at, failed)
  SELECT queue_name, now(), true FROM taken
  WHERE queue_name IN (SELECT name FROM queueapp_queuecontrol WHERE breaker_threshold IS NOT NULL)
),
requeued AS (
  UPDATE queueapp_task_live t
  SET status = 'SCHEDULED', errors = t.errors || taken.error, worker_id = NULL,
      run_after = now() + make_interval(secs => least(%(backoff_max)s::float8,
                  %(backoff_base)s::float8 * power(2, least(t.attempts - t.retried_at_attempt - 1, 60))) * (0.5 + random() / 2))
  FROM taken
  WHERE t.id = taken.id AND taken.retry
  RETURNING t.id
),
ended AS (
  DELETE FROM queueapp_task_live t USING taken WHERE t.id = taken.id AND NOT taken.retry
  RETURNING t.*, taken.error
),
moved AS (
  INSERT INTO queueapp_task_history (id, task_path, queue_name, priority, status, args, kwargs, run_after,
                                     enqueued_at, started_at, finished_at, attempts, max_attempts, worker_ids,
                                     errors, return_value, timeout, cancel_requested, worker_id, unique_key, concurrency_key)
  SELECT id, task_path, queue_name, priority, CASE WHEN cancel_requested THEN 'CANCELLED' ELSE 'FAILED' END,
         args, kwargs, run_after, enqueued_at, started_at, now(), attempts, max_attempts, worker_ids,
         errors || error, NULL, timeout, cancel_requested, worker_id, unique_key, concurrency_key
  FROM ended
  RETURNING id
)
SELECT (SELECT locked FROM reaper), (SELECT count(*) FROM lost), (SELECT count(*) FROM requeued),
       (SELECT count(*) FROM moved);

-- preview_reap --
-- What reap_workers would do now, changing nothing (reap_stale --dry-run).
WITH stale AS (
  SELECT id FROM queueapp_worker
  WHERE state IN ('ALIVE', 'STOPPING') AND last_heartbeat_at < now() - make_interval(secs => %(stale_after)s::float8)
  UNION
  SELECT id FROM queueapp_worker WHERE state IN ('LOST', 'STOPPED')
)
SELECT (SELECT count(*) FROM queueapp_worker
        WHERE state IN ('ALIVE', 'STOPPING')
          AND last_heartbeat_at < now() - make_interval(secs => %(stale_after)s::float8)),
       count(*) FILTER (WHERE NOT t.cancel_requested AND t.attempts < t.max_attempts),
       count(*) FILTER (WHERE t.cancel_requested OR t.attempts >= t.max_attempts)
FROM queueapp_task_live t JOIN stale ON t.worker_id = stale.id
WHERE t.status = 'RUNNING';

-- timed_tasks --
-- RUNNING tasks of the given workers that have a timeout, and whether they are past it: the
-- supervisor kills the process of a late one, and stops asking while none runs.
SELECT id, worker_id, attempts, timeout, started_at + make_interval(secs => timeout) < now()
FROM queueapp_task_live
WHERE status = 'RUNNING' AND worker_id = ANY(%(worker_ids)s::uuid[]) AND timeout IS NOT NULL;

-- retry_task --
-- A FAILED or CANCELLED task moves back from history to the live table, READY now, under the same
-- id (its result id stays valid) with its errors kept and a fresh budget of attempts. attempts
-- only ever grows (it fences workers), so the budget is added on top of it, and retried_at_attempt
-- remembers where it started: the backoff (fail_task, reap_workers) counts from there, as for a new
-- task. Two concurrent retries: the second waits for the first's row lock, finds the row gone, and
-- matches nothing. A unique task whose key another live task holds now stays where it is (nothing
-- comes back).
WITH back AS (
  DELETE FROM queueapp_task_history h WHERE id = %(id)s AND status IN ('FAILED', 'CANCELLED')
    AND NOT EXISTS (SELECT 1 FROM queueapp_task_live l WHERE l.unique_key = h.unique_key)
  RETURNING *
),
ready AS (
  INSERT INTO queueapp_task_live (id, task_path, queue_name, priority, status, args, kwargs, run_after,
                                  enqueued_at, started_at, finished_at, attempts, max_attempts, worker_ids,
                                  errors, return_value, timeout, cancel_requested, worker_id, unique_key,
                                  retried_at_attempt, concurrency_key)
  SELECT id, task_path, queue_name, priority, 'READY', args, kwargs, now(), enqueued_at, NULL, NULL,
         attempts, attempts + %(budget)s, worker_ids, errors, NULL, timeout, false, NULL, unique_key, attempts, concurrency_key
  FROM back
  RETURNING status, queue_name
)
SELECT status, CASE WHEN %(notify)s THEN queueapp_wake_waiters(queue_name) END FROM ready;

-- set_priority --
UPDATE queueapp_task_live SET priority = %(priority)s
WHERE id = %(id)s AND status IN ('SCHEDULED', 'READY')
RETURNING id;

-- count_ready --
-- READY tasks of these queues, counted up to cap only: back pressure needs "above the limit or not"
-- (one queue), a supervisor's poll for its waiting children how many of them to wake (its queues,
-- workers.wakeups.ChildPoll); either must stay cheap when a queue is huge.
SELECT count(*) FROM (
  SELECT 1 FROM queueapp_task_live WHERE status = 'READY' AND queue_name = ANY(%(queues)s::text[])
  LIMIT %(cap)s
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

-- serving_backend --
-- The server session that answers. A pooler announces a cancel key of its own when a client
-- connects (libpq's backend pid), so a different pid here means one stands in between.
SELECT pg_backend_pid();

-- pickup_latency --
-- Seconds from due to start of the latest 2,000 first attempts finished since a moment
-- (task_finished_idx, newest first): a sample, so a busy window costs no more than a quiet one.
SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY s), percentile_cont(0.95) WITHIN GROUP (ORDER BY s)
FROM (SELECT extract(epoch FROM started_at - run_after) AS s FROM queueapp_task_history
      WHERE finished_at >= %(since)s AND attempts = 1 AND started_at IS NOT NULL
      ORDER BY finished_at DESC LIMIT 2000) AS recent;

-- report_plan --
-- Before a report that reads history, in its transaction. Planner trap: the per-minute report's
-- estimate (a thousand rows from generate_series, each a lateral scan of every partition) passes
-- jit_above_cost, and compiling it took 1.3 s of the overview's 2 s at 10,000,000 finished tasks,
-- for a query that then runs in 50 ms. LOCAL: the caller's own queries keep their setting.
SET LOCAL jit = off;

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
  FROM queueapp_task_history
  WHERE finished_at >= minutes.minute AND finished_at < minutes.minute + interval '1 minute'
) AS counted
CROSS JOIN LATERAL (
  SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY wait) AS p50,
         percentile_cont(0.95) WITHIN GROUP (ORDER BY wait) AS p95
  FROM (SELECT extract(epoch FROM started_at - run_after) AS wait FROM queueapp_task_history
        WHERE finished_at >= minutes.minute AND finished_at < minutes.minute + interval '1 minute'
          AND attempts = 1 AND started_at IS NOT NULL
        ORDER BY finished_at DESC LIMIT 500) AS latest
) AS sampled
ORDER BY minute;

-- finished_by_queue --
-- Tasks finished since a moment, per queue and status: the overview's last hour, index-only from
-- task_history_finished_idx (it includes queue_name and status).
SELECT queue_name, status, count(*) FROM queueapp_task_history
WHERE finished_at >= %(since)s
GROUP BY queue_name, status;

-- queue_overview --
-- Per queue and live status: how many, for READY the wait of the oldest (READY tasks are due), and
-- for SCHEDULED how long the oldest has been due without being staged (the stager's lag: nothing
-- unless no process runs the stager). Finished tasks are counted per minute by finished_per_minute:
-- counting all of history would read every retained row.
SELECT queue_name, status, count(*), extract(epoch FROM now() - min(run_after) FILTER (WHERE status = 'READY')),
       extract(epoch FROM now() - min(run_after) FILTER (WHERE status = 'SCHEDULED' AND run_after <= now()))
FROM queueapp_task_live
GROUP BY queue_name, status
ORDER BY queue_name, status;

-- purge_finished --
-- Retention inside partitions that are not wholly past the cutoff (and in the default partition,
-- and for a subset of statuses): delete up to batch finished tasks that finished before the cutoff,
-- oldest first, through task_history_finished_idx. Small batches keep locks and WAL bursts short.
-- Whole partitions past the cutoff are dropped instead (drop_history_partition).
WITH doomed AS (
  SELECT id, finished_at FROM queueapp_task_history
  WHERE finished_at < now() - make_interval(secs => %(older_than)s::float8)
    AND status = ANY(%(statuses)s::text[])
  ORDER BY finished_at
  LIMIT %(batch)s
)
DELETE FROM queueapp_task_history t USING doomed WHERE t.id = doomed.id AND t.finished_at = doomed.finished_at;

-- purge_workers --
-- Retention of worker rows (one per process start): those STOPPED or LOST before the cutoff go,
-- except a LOST one that still holds RUNNING tasks (the reaper has yet to take them back through
-- it). The check reads task_live_running_queue_idx. Finished tasks keep the id of the worker that ran
-- them; the console shows it without a link once the row is gone.
DELETE FROM queueapp_worker w
WHERE w.state IN ('STOPPED', 'LOST')
  AND coalesce(w.stopped_at, w.last_heartbeat_at) < now() - make_interval(secs => %(older_than)s::float8)
  AND NOT EXISTS (SELECT 1 FROM queueapp_task_live t WHERE t.status = 'RUNNING' AND t.worker_id = w.id);

-- count_purgeable --
SELECT count(*) FROM queueapp_task_history
WHERE finished_at < now() - make_interval(secs => %(older_than)s::float8) AND status = ANY(%(statuses)s::text[]);

-- history_partitions --
-- The history's partitions by name (store.history names them queueapp_task_history_pYYYYMMDD, for
-- the UTC day they start), with their row estimates.
SELECT c.relname, greatest(c.reltuples, 0)::bigint
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'queueapp_task_history'::regclass
ORDER BY c.relname;

-- lock_partitions --
-- One session at a time changes the partitions (workers and cron may all try): the others skip.
-- lock_timeout: attaching or dropping a partition waits for the table's lock, and every INSERT
-- into history would queue behind that wait; a partition is made days ahead, so giving up after a
-- moment and trying at the next run is safe.
SELECT pg_try_advisory_xact_lock(hashtext('taskqueue.partitions')), set_config('lock_timeout', '2s', true);

-- create_history_partition --
-- A table like history (columns, defaults, the status check), then attached: ATTACH takes a
-- SHARE UPDATE EXCLUSIVE lock on history, which INSERTs pass (CREATE TABLE ... PARTITION OF would
-- take an ACCESS EXCLUSIVE one). ATTACH builds the partition's indexes (it is empty: at once).
-- The lock_timeout is set again here: in a worker, each statement of a transaction starts with the
-- worker's own limits (store.StatementLimits), which would replace lock_partitions' 2 s by 15.
SET LOCAL lock_timeout = '2s';
CREATE TABLE {partition} (LIKE queueapp_task_history INCLUDING DEFAULTS INCLUDING CONSTRAINTS);
ALTER TABLE queueapp_task_history ATTACH PARTITION {partition} FOR VALUES FROM (%(start)s) TO (%(end)s);

-- drop_history_partition --
-- Retention of a whole day: no row by row DELETE, no dead tuples, no vacuum. (lock_timeout: as in
-- create_history_partition.)
SET LOCAL lock_timeout = '2s';
DROP TABLE {partition};

-- take_housekeeping --
-- One process runs the fleet's stager and scheduler (workers.housekeeper): it holds this row for
-- ttl seconds and renews it; any other takes it once it expired (a holder that died) or was given
-- up (a holder that stopped). A row comes back only to the process that holds it now. The clock is
-- the database's, so hosts with skewed clocks agree on when a holder expired. A row another process
-- holds and that has not expired is only read: ON CONFLICT would lock it even when its WHERE then
-- fails, and a lock is a write, committed with a WAL flush, by every process of the fleet at every
-- try. The WHERE below decides again, on the locked row, for those that do get that far.
-- It also counts READY tasks of %(queues)s up to %(cap)s (count_ready): a supervisor's poll for its
-- waiting children comes with its try, one round trip every poll interval at rest instead of two
-- (cap 0: nothing counted). taken is NULL when another process holds the row.
WITH taken AS (
  INSERT INTO queueapp_housekeeper AS h (role, holder, hostname, pid, taken_at, expires_at)
  SELECT %(role)s, %(holder)s::uuid, %(hostname)s, %(pid)s, now(), now() + make_interval(secs => %(ttl)s::float8)
  WHERE NOT EXISTS (SELECT 1 FROM queueapp_housekeeper
                    WHERE role = %(role)s AND holder <> %(holder)s::uuid AND expires_at >= now())
  ON CONFLICT (role) DO UPDATE
  SET holder = excluded.holder, hostname = excluded.hostname, pid = excluded.pid,
      taken_at = CASE WHEN h.holder = excluded.holder THEN h.taken_at ELSE excluded.taken_at END,
      expires_at = excluded.expires_at
  WHERE h.holder = excluded.holder OR h.expires_at < now()
  RETURNING h.taken_at = now() AS taken
)
SELECT (SELECT taken FROM taken),
       (SELECT count(*) FROM (
          SELECT 1 FROM queueapp_task_live WHERE status = 'READY' AND queue_name = ANY(%(queues)s::text[])
          LIMIT %(cap)s) AS capped);

-- give_up_housekeeping --
-- A holder that stops gives the row up, so another process takes it at its next try.
DELETE FROM queueapp_housekeeper WHERE role = %(role)s AND holder = %(holder)s::uuid;

-- stage_tasks --
-- The stager: SCHEDULED tasks that are due become READY, oldest due first, and each queue that got
-- one is notified. SKIP LOCKED: stagers in several workers share the work instead of waiting.
WITH due AS (
  SELECT id FROM queueapp_task_live
  WHERE status = 'SCHEDULED' AND run_after <= now()
  ORDER BY run_after
  LIMIT %(limit)s
  FOR UPDATE SKIP LOCKED
),
staged AS (
  UPDATE queueapp_task_live t SET status = 'READY' FROM due WHERE t.id = due.id RETURNING t.queue_name
)
SELECT queue_name, count(*), CASE WHEN %(notify)s THEN queueapp_wake_waiters(queue_name, count(*)::int) END
FROM staged GROUP BY queue_name;

-- estimated_tasks --
-- The planner's row estimates (kept by autovacuum/ANALYZE) of the live table and every history
-- partition: the console's unfiltered count, instant, never exact.
SELECT coalesce(sum(greatest(c.reltuples, 0)), 0)::bigint FROM pg_class c
WHERE c.oid = 'queueapp_task_live'::regclass
   OR c.oid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = 'queueapp_task_history'::regclass);

-- purge_idempotency_keys --
DELETE FROM queueapp_idempotency WHERE created_at < now() - make_interval(secs => %(older_than)s::float8);

-- due_schedules --
-- Enabled schedules whose next tick has come (database clock), and that clock.
SELECT id, name, task_path, cron, timezone, args, kwargs, queue_name, priority, catch_up, catch_up_limit,
       next_run_at, now()
FROM queueapp_schedule
WHERE enabled AND next_run_at <= now()
ORDER BY next_run_at;

-- claim_tick --
-- Exactly once per tick: the unique (schedule_id, tick_at) lets one of any number of racing
-- schedulers insert a tick; the others wait for its transaction and then insert nothing (no row
-- back), or insert it themselves if that transaction rolled back (its task was never enqueued).
INSERT INTO queueapp_schedule_tick (schedule_id, tick_at, task_id, manual, enqueued_at)
VALUES (%(schedule_id)s, %(tick_at)s, NULL, %(manual)s, now())
ON CONFLICT (schedule_id, tick_at) DO NOTHING
RETURNING id;

-- set_tick_task --
UPDATE queueapp_schedule_tick SET task_id = %(task_id)s WHERE id = %(id)s;

-- advance_schedule --
-- The cursor only moves forward: a scheduler that planned from an older cursor cannot move it back.
UPDATE queueapp_schedule SET next_run_at = greatest(next_run_at, %(next_run_at)s)
WHERE id = %(id)s;

-- purge_schedule_ticks --
-- A tick's row guards its uniqueness while a scheduler may still plan it: only one that read the
-- schedule's cursor before the tick was enqueued can, a pass's time at most. Rows enqueued longer
-- ago than older_than go (by enqueued_at, not tick_at: a catch-up enqueues old ticks now), except
-- each schedule's latest, the console's "last run".
DELETE FROM queueapp_schedule_tick t
WHERE t.enqueued_at < now() - make_interval(secs => %(older_than)s::float8)
  AND t.tick_at < (SELECT max(l.tick_at) FROM queueapp_schedule_tick l WHERE l.schedule_id = t.schedule_id);

-- upsert_code_schedule --
-- A schedule declared in code (setting or @periodic), written at worker start. Several workers may
-- start at once: ON CONFLICT makes that safe. `enabled` is the console's to change and stays; the
-- cursor moves to the given next tick only when the timing changed (or was never set).
INSERT INTO queueapp_schedule AS s (name, task_path, cron, timezone, args, kwargs, queue_name, priority,
                                    catch_up, catch_up_limit, enabled, source, next_run_at, created_at)
VALUES (%(name)s, %(task_path)s, %(cron)s, %(timezone)s, %(args)s::jsonb, %(kwargs)s::jsonb, %(queue_name)s,
        %(priority)s, %(catch_up)s, %(catch_up_limit)s, true, 'code', %(next_run_at)s, now())
ON CONFLICT (name) DO UPDATE
SET task_path = excluded.task_path, cron = excluded.cron, timezone = excluded.timezone, args = excluded.args,
    kwargs = excluded.kwargs, queue_name = excluded.queue_name, priority = excluded.priority,
    catch_up = excluded.catch_up, catch_up_limit = excluded.catch_up_limit, source = 'code',
    next_run_at = CASE WHEN s.next_run_at IS NULL OR s.cron <> excluded.cron OR s.timezone <> excluded.timezone
                       THEN excluded.next_run_at ELSE s.next_run_at END;

-- drop_code_schedules --
-- Schedules once declared in code and no longer: gone with their ticks (tasks stay).
DELETE FROM queueapp_schedule WHERE source = 'code' AND NOT (name = ANY(%(names)s::text[]));
