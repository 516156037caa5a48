using Haven.Server.Database;

namespace Haven.Server.Repositories;

/// <summary>
/// The server's books on a tenant's repository, kept beside the store: bytes stored (against the quota) and the
/// catalog of blobs per pack. Every writer of the store (the repository endpoints, the server's maintenance) keeps them.
/// </summary>
internal static class TenantUsage
{
    /// <summary>Adds to the tenant's usage unless that passes its quota; false when it would.</summary>
    public static async Task<bool> ChargeAsync(ManagementDb db, string tenant, long bytes, CancellationToken ct) =>
        await db.ExecuteAsync(
            "UPDATE tenants SET usage_bytes = usage_bytes + @bytes WHERE id = @tenant AND (quota_bytes IS NULL OR usage_bytes + @bytes <= quota_bytes)",
            new { bytes, tenant }, ct).ConfigureAwait(false) == 1;

    /// <summary>Adds to the tenant's usage whatever the quota (the server's own maintenance, which frees more than it adds).</summary>
    public static Task AddAsync(ManagementDb db, string tenant, long bytes, CancellationToken ct) =>
        db.ExecuteAsync("UPDATE tenants SET usage_bytes = usage_bytes + @bytes WHERE id = @tenant", new { bytes, tenant }, ct);

    public static Task RefundAsync(ManagementDb db, string tenant, long bytes) =>
        db.ExecuteAsync("UPDATE tenants SET usage_bytes = CASE WHEN usage_bytes > @bytes THEN usage_bytes - @bytes ELSE 0 END WHERE id = @tenant", new { bytes, tenant }, CancellationToken.None);

    /// <summary>Takes a pack's blobs out of the catalog; called before the pack is deleted, so no writer skips a blob that is about to go.</summary>
    public static Task RemovePackAsync(ManagementDb db, string tenant, string packName, CancellationToken ct) =>
        db.ExecuteAsync("DELETE FROM chunk_catalog WHERE tenant_id = @tenant AND pack_id = @name", new { tenant, name = packName }, ct);
}
