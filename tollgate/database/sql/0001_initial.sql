-- 0001_initial: the registry, the per-request spend log, usage counters, the audit log, scaling history.
-- Times are epoch milliseconds (BIGINT), booleans SMALLINT 0/1, JSON documents TEXT.

-- Tenants, keys (as hashes), namespaces and rules changed at runtime: name -> JSON, NULL once deleted.
CREATE TABLE registry_records (
    name TEXT PRIMARY KEY,
    doc TEXT NULL,
    version BIGINT NOT NULL
);
CREATE INDEX registry_records_version ON registry_records (version);

-- The registry's one version counter, bumped by every write.
CREATE TABLE registry_version (
    id SMALLINT PRIMARY KEY CHECK (id = 1),
    version BIGINT NOT NULL
);
INSERT INTO registry_version (id, version) VALUES (1, 0);

-- One row per request, written in batches off the request path.
CREATE TABLE spend_log (
    request_id TEXT PRIMARY KEY,
    ts_ms BIGINT NOT NULL,
    tenant TEXT NOT NULL,
    key_id TEXT,
    end_user TEXT,
    namespace TEXT,
    endpoint TEXT,
    model TEXT,
    model_served TEXT,
    provider TEXT,
    upstream TEXT,
    deployment_model TEXT,
    prompt_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    cached_tokens BIGINT NOT NULL,
    cache_write_tokens BIGINT NOT NULL,
    reasoning_tokens BIGINT NOT NULL,
    usage_reported SMALLINT NOT NULL,
    cost_nanos BIGINT NOT NULL,
    currency TEXT NOT NULL,
    status INTEGER NOT NULL,
    error TEXT,
    total_ms DOUBLE PRECISION NOT NULL,
    ttfb_ms DOUBLE PRECISION,
    stream SMALLINT NOT NULL,
    cut SMALLINT NOT NULL,
    attempts INTEGER
);
CREATE INDEX spend_log_ts ON spend_log (ts_ms, request_id);
CREATE INDEX spend_log_tenant ON spend_log (tenant, ts_ms);
CREATE INDEX spend_log_key ON spend_log (key_id, ts_ms);
CREATE INDEX spend_log_end_user ON spend_log (end_user, ts_ms);
CREATE INDEX spend_log_model ON spend_log (model, ts_ms);
CREATE INDEX spend_log_status ON spend_log (status, ts_ms);

-- Usage aggregates: the Redis usage store's hashes of counters, scope = the hash key without its prefix.
CREATE TABLE usage_counters (
    scope TEXT NOT NULL,
    field TEXT NOT NULL,
    value BIGINT NOT NULL,
    PRIMARY KEY (scope, field)
);

-- sqlite:
CREATE TABLE audit_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts_ms BIGINT NOT NULL,
    event TEXT NOT NULL,
    tenant TEXT,
    key_id TEXT,
    actor TEXT,
    doc TEXT NOT NULL
);
CREATE TABLE scaling_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    pool TEXT NOT NULL,
    ts_ms BIGINT NOT NULL,
    doc TEXT NOT NULL
);

-- postgresql:
CREATE TABLE audit_log (
    id BIGSERIAL PRIMARY KEY,
    ts_ms BIGINT NOT NULL,
    event TEXT NOT NULL,
    tenant TEXT,
    key_id TEXT,
    actor TEXT,
    doc TEXT NOT NULL
);
CREATE TABLE scaling_history (
    id BIGSERIAL PRIMARY KEY,
    pool TEXT NOT NULL,
    ts_ms BIGINT NOT NULL,
    doc TEXT NOT NULL
);

-- both:
CREATE INDEX audit_log_tenant ON audit_log (tenant, ts_ms);
CREATE INDEX audit_log_ts ON audit_log (ts_ms);
CREATE INDEX scaling_history_pool ON scaling_history (pool, ts_ms);
