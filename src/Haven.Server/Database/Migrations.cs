using Dapper;
using Haven.Core;

namespace Haven.Server.Database;

/// <summary>
/// The management schema as numbered steps. A step is never edited once released; changes come as a new step.
/// SQL is portable between SQLite and PostgreSQL except for the placeholders: <c>{autoid}</c> (an auto-numbered
/// primary key). Ids are text (random, hex), times are RFC 3339 UTC text (sortable as text), flags and counts are
/// integers (BIGINT, so both engines hand back 64-bit values). Each step runs in a transaction together with its row in <c>schema_migrations</c>; on PostgreSQL an
/// advisory lock keeps two starting servers from migrating at once.
/// </summary>
public static class Migrations
{
    public static IReadOnlyList<(int Version, string Name, string Sql)> All { get; } =
    [
        (1, "tenants, admins, clients, enrolment, authentication failures, audit", """
            CREATE TABLE tenants (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL UNIQUE,
                created TEXT NOT NULL
            );
            CREATE TABLE admins (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL UNIQUE,
                tenant_id TEXT REFERENCES tenants(id),
                role TEXT NOT NULL,
                password_hash TEXT NOT NULL,
                created TEXT NOT NULL
            );
            CREATE TABLE api_tokens (
                id TEXT PRIMARY KEY,
                admin_id TEXT NOT NULL REFERENCES admins(id),
                token_hash TEXT NOT NULL UNIQUE,
                created TEXT NOT NULL,
                last_used TEXT
            );
            CREATE TABLE clients (
                id TEXT PRIMARY KEY,
                tenant_id TEXT NOT NULL REFERENCES tenants(id),
                name TEXT NOT NULL,
                hostname TEXT,
                enrolled TEXT NOT NULL,
                last_seen TEXT,
                cert_fingerprint TEXT NOT NULL,
                cert_not_after TEXT NOT NULL,
                revoked TEXT,
                UNIQUE (tenant_id, name)
            );
            CREATE TABLE client_certificates (
                fingerprint TEXT PRIMARY KEY,
                client_id TEXT NOT NULL REFERENCES clients(id),
                serial TEXT NOT NULL,
                not_after TEXT NOT NULL,
                issued TEXT NOT NULL,
                revoked TEXT
            );
            CREATE TABLE enrollment_tokens (
                id TEXT PRIMARY KEY,
                tenant_id TEXT NOT NULL REFERENCES tenants(id),
                secret_hash TEXT NOT NULL UNIQUE,
                client_name TEXT,
                uses_left BIGINT NOT NULL,
                expires TEXT NOT NULL,
                created_by TEXT NOT NULL,
                created TEXT NOT NULL
            );
            CREATE TABLE auth_failures (
                id {autoid},
                time TEXT NOT NULL,
                kind TEXT NOT NULL,
                reason TEXT NOT NULL,
                remote_address TEXT NOT NULL,
                remote_port BIGINT NOT NULL,
                forwarded_for TEXT,
                cert_fingerprint TEXT,
                cert_subject TEXT,
                server_name TEXT,
                user_agent TEXT,
                path TEXT NOT NULL
            );
            CREATE INDEX auth_failures_time ON auth_failures (time);
            CREATE TABLE audit_log (
                id {autoid},
                time TEXT NOT NULL,
                actor TEXT NOT NULL,
                tenant_id TEXT,
                action TEXT NOT NULL,
                detail TEXT NOT NULL
            );
            """),
        (2, "hosted repositories: quotas, usage, blob catalog, repository keys for enrolment", """
            ALTER TABLE tenants ADD COLUMN quota_bytes BIGINT;
            ALTER TABLE tenants ADD COLUMN usage_bytes BIGINT NOT NULL DEFAULT 0;
            ALTER TABLE enrollment_tokens ADD COLUMN repository_key_id TEXT;
            CREATE TABLE chunk_catalog (
                tenant_id TEXT NOT NULL REFERENCES tenants(id),
                blob_id TEXT NOT NULL,
                pack_id TEXT NOT NULL,
                PRIMARY KEY (tenant_id, blob_id)
            );
            CREATE INDEX chunk_catalog_pack ON chunk_catalog (tenant_id, pack_id);
            """),
        (3, "groups, plans, jobs, notification targets", """
            CREATE TABLE client_groups (
                id TEXT PRIMARY KEY,
                tenant_id TEXT NOT NULL REFERENCES tenants(id),
                name TEXT NOT NULL,
                created TEXT NOT NULL,
                UNIQUE (tenant_id, name)
            );
            CREATE TABLE group_members (
                group_id TEXT NOT NULL REFERENCES client_groups(id),
                client_id TEXT NOT NULL REFERENCES clients(id),
                PRIMARY KEY (group_id, client_id)
            );
            CREATE TABLE plans (
                id TEXT PRIMARY KEY,
                tenant_id TEXT NOT NULL REFERENCES tenants(id),
                name TEXT NOT NULL,
                client_id TEXT REFERENCES clients(id),
                group_id TEXT REFERENCES client_groups(id),
                spec TEXT NOT NULL,
                schedule TEXT,
                next_run TEXT,
                run_on_ready BIGINT NOT NULL,
                created TEXT NOT NULL,
                UNIQUE (tenant_id, name)
            );
            CREATE TABLE jobs (
                id TEXT PRIMARY KEY,
                tenant_id TEXT NOT NULL REFERENCES tenants(id),
                client_id TEXT NOT NULL REFERENCES clients(id),
                plan_id TEXT REFERENCES plans(id),
                kind TEXT NOT NULL,
                trigger TEXT NOT NULL,
                state TEXT NOT NULL,
                queued TEXT NOT NULL,
                started TEXT,
                finished TEXT,
                last_report TEXT,
                missed BIGINT NOT NULL DEFAULT 0,
                snapshot_id TEXT,
                stats TEXT,
                progress TEXT,
                message TEXT,
                params TEXT,
                notified BIGINT NOT NULL DEFAULT 0
            );
            CREATE INDEX jobs_client_state ON jobs (client_id, state);
            CREATE INDEX jobs_tenant_queued ON jobs (tenant_id, queued);
            CREATE TABLE notification_targets (
                id TEXT PRIMARY KEY,
                tenant_id TEXT NOT NULL REFERENCES tenants(id),
                kind TEXT NOT NULL,
                address TEXT NOT NULL,
                created TEXT NOT NULL
            );
            """),
        (4, "retention applied by the server: forgotten jobs, who uploaded each snapshot, maintenance times", """
            ALTER TABLE jobs ADD COLUMN forgotten TEXT;
            CREATE INDEX jobs_plan_client ON jobs (plan_id, client_id);
            CREATE TABLE snapshot_uploads (
                tenant_id TEXT NOT NULL REFERENCES tenants(id),
                name TEXT NOT NULL,
                client_id TEXT NOT NULL REFERENCES clients(id),
                uploaded TEXT NOT NULL,
                PRIMARY KEY (tenant_id, name)
            );
            ALTER TABLE tenants ADD COLUMN last_maintenance TEXT;
            ALTER TABLE tenants ADD COLUMN prune_due BIGINT NOT NULL DEFAULT 0;
            """),
    ];

    public static int Latest => All[^1].Version;

    internal static string Render(string sql, SqlDialect dialect) => sql.Replace(
        "{autoid}",
        dialect == SqlDialect.Sqlite ? "INTEGER PRIMARY KEY AUTOINCREMENT" : "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
        StringComparison.Ordinal);

    internal static async Task<int> ApplyAsync(ManagementDb db, CancellationToken ct)
    {
        return await db.InTransactionAsync(async (c, tx) =>
        {
            if (db.Dialect == SqlDialect.PostgreSql)
            {
                await c.ExecuteAsync("SELECT pg_advisory_xact_lock(7236)", transaction: tx).ConfigureAwait(false);
            }

            await c.ExecuteAsync("CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied TEXT NOT NULL)", transaction: tx).ConfigureAwait(false);
            long current = await c.ExecuteScalarAsync<long?>("SELECT MAX(version) FROM schema_migrations", transaction: tx).ConfigureAwait(false) ?? 0;
            if (current > Latest)
            {
                throw new HavenException(
                    ErrorCode.UnsupportedFormat,
                    $"the management database ({db.Description}) has schema version {current}, newer than this server knows ({Latest})",
                    "run the newer Haven server that migrated it, or restore the database from before the upgrade");
            }

            int applied = 0;
            foreach (var (version, name, sql) in All.Where(m => m.Version > current))
            {
                await c.ExecuteAsync(Render(sql, db.Dialect), transaction: tx).ConfigureAwait(false);
                await c.ExecuteAsync("INSERT INTO schema_migrations (version, name, applied) VALUES (@version, @name, @applied)", new { version, name, applied = Clock.Format(DateTimeOffset.UtcNow) }, tx).ConfigureAwait(false);
                applied++;
            }

            return applied;
        }, ct).ConfigureAwait(false);
    }
}

/// <summary>Times as the database keeps them: RFC 3339 UTC with 7 fraction digits, so text order is time order.</summary>
public static class Clock
{
    public static string Format(DateTimeOffset time) => time.UtcDateTime.ToString("yyyy-MM-dd'T'HH:mm:ss.fffffff'Z'", System.Globalization.CultureInfo.InvariantCulture);

    public static DateTimeOffset Parse(string text) => DateTimeOffset.Parse(text, System.Globalization.CultureInfo.InvariantCulture, System.Globalization.DateTimeStyles.AssumeUniversal | System.Globalization.DateTimeStyles.AdjustToUniversal);

    public static DateTimeOffset? ParseOrNull(string? text) => text is null ? null : Parse(text);
}
