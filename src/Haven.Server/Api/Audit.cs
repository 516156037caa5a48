using Haven.Server.Database;

namespace Haven.Server.Api;

/// <summary>The audit log: who changed what, for administrators to read back.</summary>
public sealed class Audit(ManagementDb db, TimeProvider time)
{
    public Task WriteAsync(string actor, string? tenantId, string action, string detail, CancellationToken ct) =>
        db.ExecuteAsync(
            "INSERT INTO audit_log (time, actor, tenant_id, action, detail) VALUES (@time, @actor, @tenantId, @action, @detail)",
            new { time = Clock.Format(time.GetUtcNow()), actor, tenantId, action, detail },
            ct);
}
