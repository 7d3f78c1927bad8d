"""The SQL text of the PostgreSQL store's statements (``{s}``: its schema, quoted)."""

from __future__ import annotations

# The statements of the hot paths, formatted with the schema once per store.
QUERIES = {
    "account": "SELECT plan, agents, groups_, last_sequence, rules_version, rules_generation,"
               " last_occurred_at, event_counter, views FROM {s}.accounts"
               " WHERE account_id = %s",
    "conversations": "SELECT conversation_id, status, group_id, joined, last_sequence,"
                     " categories, waiting_since, last_message_by, due_at, details"
                     " FROM {s}.conversations WHERE account_id = %s",
    "agents": "SELECT agent_id, counts, unread_counts, seq FROM {s}.agents"
              " WHERE account_id = %s",
    "events": "SELECT number, event_id FROM {s}.events WHERE account_id = %s"
              " ORDER BY number DESC LIMIT %s",
    "tombstones": "SELECT number, conversation_id, last_sequence FROM {s}.tombstones"
                  " WHERE account_id = %s ORDER BY number DESC LIMIT %s",
    "behind": "SELECT account_id FROM {s}.accounts WHERE account_id > %s"
              " AND rules_version IS DISTINCT FROM %s AND partition = ANY(%s)"
              " ORDER BY account_id LIMIT %s",
    "behind_in": "SELECT account_id FROM {s}.accounts WHERE account_id > %s"
                 " AND rules_version IS DISTINCT FROM %s AND partition = %s"
                 " ORDER BY account_id LIMIT %s",
    # Due crossings of the partitions owned: the index by due time, then each account's
    # partition (few rows: only what is due).
    "due": "SELECT c.account_id FROM {s}.conversations c JOIN {s}.accounts a"
           " USING (account_id) WHERE c.due_at <= %s AND a.partition = ANY(%s)"
           " GROUP BY c.account_id ORDER BY MIN(c.due_at), c.account_id LIMIT %s",
    "next_due": "SELECT MIN(c.due_at) FROM {s}.conversations c JOIN {s}.accounts a"
                " USING (account_id) WHERE c.due_at IS NOT NULL AND a.partition = ANY(%s)",
    "lock": "SELECT partition, epoch FROM {s}.partitions WHERE partition = ANY(%s)"
            " ORDER BY partition FOR UPDATE",
    # A commit writes in two statements after the fence, each over arrays (unnest): a
    # fixed number of round trips and plans however many rows the batch has. The arrays
    # go in binary (%b): the text format escapes every quote of the JSON columns, which
    # cost more than the writes. Data-modifying CTEs share one snapshot, so the
    # tombstones they delete are never the ones they insert.
    "write":
        "WITH put_conversations AS (INSERT INTO {s}.conversations SELECT * FROM unnest("
        "  %(c_account)b::text[], %(c_id)b::text[], %(c_status)b::text[],"
        "  %(c_group)b::text[], %(c_joined)b::text[], %(c_sequence)b::bigint[],"
        "  %(c_categories)b::text[], %(c_waiting)b::text[], %(c_last_by)b::text[],"
        "  %(c_due)b::bigint[], %(c_details)b::text[])"
        " ON CONFLICT (account_id, conversation_id) DO UPDATE SET status = EXCLUDED.status,"
        "  group_id = EXCLUDED.group_id, joined = EXCLUDED.joined,"
        "  last_sequence = EXCLUDED.last_sequence, categories = EXCLUDED.categories,"
        "  waiting_since = EXCLUDED.waiting_since,"
        "  last_message_by = EXCLUDED.last_message_by, due_at = EXCLUDED.due_at,"
        "  details = EXCLUDED.details),"
        " deleted AS (DELETE FROM {s}.conversations c"
        "  USING unnest(%(d_account)b::text[], %(d_id)b::text[])"
        "  AS d(account_id, conversation_id)"
        "  WHERE c.account_id = d.account_id AND c.conversation_id = d.conversation_id),"
        " put_agents AS (INSERT INTO {s}.agents SELECT * FROM unnest(%(g_account)b::text[],"
        "  %(g_id)b::text[], %(g_counts)b::text[], %(g_seq)b::bigint[],"
        "  %(g_unread)b::text[])"
        "  ON CONFLICT (account_id, agent_id) DO UPDATE"
        "  SET counts = EXCLUDED.counts, seq = EXCLUDED.seq,"
        "  unread_counts = EXCLUDED.unread_counts),"
        # Plain INSERT: a number is used once per account; a clash is a bug, not a retry.
        " put_events AS (INSERT INTO {s}.events SELECT * FROM unnest(%(e_account)b::text[],"
        "  %(e_number)b::bigint[], %(e_id)b::text[])),"
        # A conversation tombstoned again (a newer event for it) keeps one row.
        " superseded AS (DELETE FROM {s}.tombstones t"
        "  USING unnest(%(t_account)b::text[], %(t_id)b::text[])"
        "  AS d(account_id, conversation_id)"
        "  WHERE t.account_id = d.account_id AND t.conversation_id = d.conversation_id"
        "  RETURNING t.account_id),"
        " put_tombstones AS (INSERT INTO {s}.tombstones SELECT * FROM unnest("
        "  %(t_account)b::text[], %(t_number)b::bigint[], %(t_id)b::text[],"
        "  %(t_sequence)b::bigint[]))"
        # What the accounts kept before this commit, and the tombstones it replaced.
        " SELECT account_id, events_kept, tombstones_kept, 0 FROM {s}.accounts"
        "  WHERE account_id = ANY(%(accounts)b::text[])"
        " UNION ALL SELECT account_id, 0, 0, count(*) FROM superseded GROUP BY account_id",
    # The windows trimmed (the oldest `excess` rows of each account: a walk over what
    # goes, not over the window), then the accounts written with what they now keep.
    "finish":
        "WITH w AS (SELECT * FROM unnest(%(account)b::text[], %(partition)b::integer[],"
        "  %(plan)b::text[], %(agents)b::text[], %(groups)b::text[],"
        "  %(last_sequence)b::bigint[], %(rules_version)b::text[],"
        "  %(rules_generation)b::bigint[], %(last_occurred_at)b::text[],"
        "  %(event_counter)b::bigint[], %(events_kept)b::bigint[],"
        "  %(tombstones_kept)b::bigint[], %(event_window)b::bigint[],"
        "  %(tombstone_window)b::bigint[], %(views)b::text[])"
        "  AS w(account_id, partition, plan, agents, groups_, last_sequence, rules_version,"
        "  rules_generation, last_occurred_at, event_counter, events_kept, tombstones_kept,"
        "  event_window, tombstone_window, views)),"
        " event_cut AS (SELECT w.account_id, (SELECT x.number FROM {s}.events x"
        "  WHERE x.account_id = w.account_id ORDER BY x.number"
        "  OFFSET w.events_kept - w.event_window - 1 LIMIT 1) AS upto"
        "  FROM w WHERE w.events_kept > w.event_window),"
        " events_gone AS (DELETE FROM {s}.events e USING event_cut c"
        "  WHERE e.account_id = c.account_id AND e.number <= c.upto RETURNING e.account_id),"
        " tombstone_cut AS (SELECT w.account_id, (SELECT x.number FROM {s}.tombstones x"
        "  WHERE x.account_id = w.account_id ORDER BY x.number"
        "  OFFSET w.tombstones_kept - w.tombstone_window - 1 LIMIT 1) AS upto"
        "  FROM w WHERE w.tombstones_kept > w.tombstone_window),"
        " tombstones_gone AS (DELETE FROM {s}.tombstones t USING tombstone_cut c"
        "  WHERE t.account_id = c.account_id AND t.number <= c.upto RETURNING t.account_id),"
        " events_trimmed AS (SELECT account_id, count(*) AS n FROM events_gone"
        "  GROUP BY account_id),"
        " tombstones_trimmed AS (SELECT account_id, count(*) AS n FROM tombstones_gone"
        "  GROUP BY account_id)"
        " INSERT INTO {s}.accounts SELECT w.account_id, w.partition, w.plan, w.agents,"
        "  w.groups_, w.last_sequence, w.rules_version, w.rules_generation,"
        "  w.last_occurred_at, w.event_counter, w.events_kept - COALESCE(e.n, 0),"
        "  w.tombstones_kept - COALESCE(t.n, 0), w.views"
        "  FROM w LEFT JOIN events_trimmed e USING (account_id)"
        "  LEFT JOIN tombstones_trimmed t USING (account_id)"
        " ON CONFLICT (account_id) DO UPDATE SET plan = EXCLUDED.plan,"
        "  agents = EXCLUDED.agents, groups_ = EXCLUDED.groups_,"
        "  last_sequence = EXCLUDED.last_sequence, rules_version = EXCLUDED.rules_version,"
        "  rules_generation = EXCLUDED.rules_generation,"
        "  last_occurred_at = EXCLUDED.last_occurred_at,"
        "  event_counter = EXCLUDED.event_counter, events_kept = EXCLUDED.events_kept,"
        "  tombstones_kept = EXCLUDED.tombstones_kept, views = EXCLUDED.views",
    "acquire": "UPDATE {s}.partitions SET epoch = epoch + 1, owner = %s, acquired_at = now()"
               " WHERE partition = %s RETURNING epoch",
    "reacquire": "UPDATE {s}.partitions SET epoch = epoch + 1, owner = %s,"
                 " acquired_at = now() WHERE partition = %s AND epoch = %s RETURNING epoch",
    "release": "UPDATE {s}.partitions SET owner = NULL WHERE partition = %s AND epoch = %s",
    "heartbeat": "INSERT INTO {s}.members (worker_id, heartbeat_at, lease_seconds)"
                 " VALUES (%s, now(), %s) ON CONFLICT (worker_id) DO UPDATE"
                 " SET heartbeat_at = now(), lease_seconds = EXCLUDED.lease_seconds",
    # Each member by its own lease: every worker reads the same live set.
    "live": "SELECT worker_id FROM {s}.members"
            " WHERE heartbeat_at > now() - make_interval(secs => lease_seconds)"
            " ORDER BY worker_id",
    "leave": "DELETE FROM {s}.members WHERE worker_id = %s",
    "disown": "UPDATE {s}.partitions SET owner = NULL WHERE owner = %s",
    # Rule versions (RuleStore). Deployments take a lock that conflicts with itself
    # (not with readers): two deploys at once get consecutive numbers, each checked
    # against the live version the other left.
    "rules_lock": "LOCK TABLE {s}.rule_deployments IN SHARE ROW EXCLUSIVE MODE",
    "rules_live": "SELECT version FROM {s}.rule_deployments ORDER BY number DESC LIMIT 1",
    "rules_keep": "INSERT INTO {s}.rule_versions (version, source, files) VALUES (%s, %s, %s)"
                  " ON CONFLICT (version) DO NOTHING",
    "rules_known": "SELECT 1 FROM {s}.rule_versions WHERE version = %s",
    "rules_go_live": "INSERT INTO {s}.rule_deployments (number, version, action, source,"
                     " summary) SELECT COALESCE(MAX(number), 0) + 1, %s, %s, %s, %s"
                     " FROM {s}.rule_deployments RETURNING number, deployed_at",
    "rules_live_files": "SELECT v.version, v.files FROM {s}.rule_versions v WHERE v.version ="
                        " (SELECT version FROM {s}.rule_deployments"
                        "  ORDER BY number DESC LIMIT 1)",
    "rules_files": "SELECT files FROM {s}.rule_versions WHERE version = %s",
    # The rules each partition's queue adopted last (worker.control), in meta.
    "in_force": "SELECT value FROM {s}.meta WHERE key = %s",
    "in_force_default": "INSERT INTO {s}.meta VALUES (%s, %s) ON CONFLICT (key) DO NOTHING",
    "in_force_set": "INSERT INTO {s}.meta SELECT * FROM unnest(%s::text[], %s::text[])"
                    " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
    "rules_history": "SELECT number, version, deployed_at, action, source, summary"
                     " FROM {s}.rule_deployments ORDER BY number",
}



