-- A sizable in-memory SQLite workload for the allocator tests (tests/programs.rs)
-- and the comparison (compare.sh): 200k inserted rows, indexes, joins, GROUP BY,
-- sorts, updates and deletes. Every answer is also computed independently in
-- tests/programs.rs (`sqlite_expected`), so keep the two in step.
-- Row x (1..200000): grp = x % 1000, name = 'name' || x, val = (x * 7919) % 100003,
-- pad = 20 + x % 200 characters.
PRAGMA cache_size = -262144;
CREATE TABLE t(id INTEGER PRIMARY KEY, grp INTEGER, name TEXT, val INTEGER, pad TEXT);
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 200000)
INSERT INTO t SELECT x, x % 1000, 'name' || x, (x * 7919) % 100003,
                     substr(printf('%0240d', 0), 1, 20 + x % 200) FROM c;
CREATE INDEX t_grp ON t(grp);
CREATE INDEX t_name ON t(name);
CREATE INDEX t_val ON t(val, grp);
CREATE TABLE g(grp INTEGER PRIMARY KEY, label TEXT);
WITH RECURSIVE c(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM c WHERE x < 999)
INSERT INTO g SELECT x, 'group' || x FROM c;
SELECT 'q1', count(*), sum(val), sum(length(pad)) FROM t;
SELECT 'q2', count(*), sum(t.val) FROM t JOIN g USING (grp) WHERE g.label LIKE 'group1%';
SELECT 'q3', grp, count(*), sum(val) FROM t GROUP BY grp ORDER BY sum(val) DESC, grp LIMIT 3;
SELECT 'q4', count(DISTINCT val) FROM t;
SELECT 'q5', name FROM t ORDER BY name LIMIT 1 OFFSET 100000;
SELECT 'q6', count(*) FROM t a JOIN t b ON a.id = b.id + 1 WHERE a.grp = 5;
SELECT 'q7', sum(length(s)) FROM (SELECT group_concat(name, ',') AS s FROM t GROUP BY grp);
SELECT 'q8', count(*) FROM (SELECT pad, name FROM t ORDER BY pad DESC, name LIMIT 50000);
UPDATE t SET val = val + 1, pad = pad || 'y' WHERE id % 3 = 0;
DELETE FROM t WHERE id % 10 = 0;
SELECT 'q9', count(*), sum(val), sum(length(pad)) FROM t;
CREATE TABLE u AS SELECT grp, count(*) AS n, max(name) AS m FROM t GROUP BY grp;
SELECT 'q10', count(*), sum(n), max(m) FROM u;
SELECT 'q11', count(*) FROM t WHERE val BETWEEN 1000 AND 2000;
