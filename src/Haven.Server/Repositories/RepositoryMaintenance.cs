using System.Collections.Concurrent;
using Haven.Core;
using Haven.Protocol;
using Haven.Repository;
using Haven.Repository.Maintenance;
using Haven.Repository.Model;
using Haven.Server.Api;
using Haven.Server.Database;
using Haven.Server.Jobs;
using Haven.Storage;
using Microsoft.Extensions.Logging;

namespace Haven.Server.Repositories;

/// <summary>
/// The server's own maintenance of a tenant's repository, the one thing besides administrators that deletes there.
/// <para>
/// <b>Forget</b> needs no key. The server knows every snapshot its agents made from the job records (client, plan,
/// time, snapshot id), so it applies each plan's retention to the backup jobs of each of the plan's clients, exactly
/// as <c>haven forget --keep-*</c> applies it to one host's snapshots, and deletes the snapshot files the policy
/// drops. It deletes a snapshot only when the client of the job also uploaded that snapshot file (recorded at upload):
/// a job report is the agent's word, and an agent must not get another client's snapshot deleted by naming it.
/// </para>
/// <para>
/// <b>Prune</b> reads trees and indexes, so it needs the repository key: it runs when the tenant gave the server a key
/// (<c>haven admin repository --server-key</c>) and something was forgotten since the last prune. It takes the
/// repository's exclusive lock, so it waits for a round in which no backup runs. Files it adds or deletes are booked
/// in the tenant's usage and catalog (<see cref="MaintenanceStore"/>).
/// </para>
/// </summary>
internal sealed class RepositoryMaintenance(ManagementDb db, TenantRepositories repositories, ServerKeys keys, Audit audit, TimeProvider time, JobOptions options, ILogger<RepositoryMaintenance> log)
{
    private readonly ConcurrentDictionary<string, SemaphoreSlim> _running = new();

    /// <summary>Maintains every tenant whose last maintenance is older than <see cref="JobOptions.MaintenanceInterval"/>.</summary>
    public async Task RunDueAsync(CancellationToken ct)
    {
        string cutoff = Clock.Format(time.GetUtcNow() - options.MaintenanceInterval);
        var due = await db.QueryAsync<string>("SELECT id FROM tenants WHERE last_maintenance IS NULL OR last_maintenance <= @cutoff ORDER BY id", new { cutoff }, ct).ConfigureAwait(false);
        foreach (string tenant in due)
        {
            try
            {
                var result = await RunAsync(tenant, "server", ct).ConfigureAwait(false);
                if (result.SnapshotsForgotten > 0 || result.Pruned)
                {
                    log.LogInformation("maintenance of tenant {Tenant}: {Forgotten} snapshot(s) forgotten, {Packs} pack(s) deleted, {Bytes} bytes freed", tenant, result.SnapshotsForgotten, result.PacksDeleted, result.BytesFreed);
                }
            }
            catch (Exception e) when (e is not OperationCanceledException || !ct.IsCancellationRequested)
            {
                // The next round tries again; the tenant's time is not moved, so it is due at once.
                log.LogWarning("maintenance of tenant {Tenant} failed: {Message}", tenant, e.Message);
            }
        }
    }

    /// <summary>Forgets by the plans' retention, then prunes if the server holds a key and something was forgotten.</summary>
    public async Task<MaintenanceResult> RunAsync(string tenantId, string actor, CancellationToken ct)
    {
        var gate = _running.GetOrAdd(tenantId, _ => new SemaphoreSlim(1, 1));
        await gate.WaitAsync(ct).ConfigureAwait(false);
        try
        {
            // Every file maintenance adds or deletes is booked in the tenant's usage and catalog.
            var store = new MaintenanceStore(repositories.For(tenantId), db, tenantId);
            var forgotten = new List<string>();
            int refused = 0;
            string? skipped = null;
            PruneResult? pruned = null;
            if (await store.StatAsync(StoreHandle.Config, ct).ConfigureAwait(false) is null)
            {
                skipped = "the repository is not initialised";
            }
            else
            {
                refused = await ForgetAsync(tenantId, store, forgotten, ct).ConfigureAwait(false);
                if (forgotten.Count > 0)
                {
                    await db.ExecuteAsync("UPDATE tenants SET prune_due = 1 WHERE id = @tenantId", new { tenantId }, ct).ConfigureAwait(false);
                    await audit.WriteAsync(actor, tenantId, "repository.forget", $"{forgotten.Count} snapshot(s) forgotten by the plans' retention: {string.Join(", ", forgotten.Select(f => f[..8]))}", ct).ConfigureAwait(false);
                }

                (pruned, skipped) = await PruneIfDueAsync(tenantId, store, ct).ConfigureAwait(false);
                if (pruned is not null)
                {
                    await audit.WriteAsync(actor, tenantId, "repository.prune", $"{pruned.PacksDeleted} pack(s) deleted, {pruned.PacksRepacked} repacked, {pruned.BytesFreed} bytes freed", ct).ConfigureAwait(false);
                }
            }

            var now = time.GetUtcNow();
            await db.ExecuteAsync("UPDATE tenants SET last_maintenance = @now WHERE id = @tenantId", new { now = Clock.Format(now), tenantId }, ct).ConfigureAwait(false);
            return new MaintenanceResult(tenantId, forgotten.Count, forgotten, refused, pruned is not null, skipped, pruned?.PacksDeleted ?? 0, pruned?.PacksRepacked ?? 0, pruned?.BytesFreed ?? 0, now);
        }
        finally
        {
            gate.Release();
        }
    }

    // Times as two columns: an expression such as COALESCE has no declared type in SQLite, so an empty answer
    // would not tell Dapper it is text.
    private sealed record RetainedJob(string JobId, string ClientId, string SnapshotId, string? Started, string Queued, string? Uploader)
    {
        public DateTimeOffset Time => Clock.Parse(Started ?? Queued);
    }

    /// <summary>Applies each plan's retention per client; returns how many drops it refused (snapshot not the client's).</summary>
    private async Task<int> ForgetAsync(string tenantId, IStore store, List<string> forgotten, CancellationToken ct)
    {
        int refused = 0;
        var plans = await db.QueryAsync<JobService.PlanRow>($"SELECT {JobService.PlanColumns} FROM plans WHERE tenant_id = @tenantId ORDER BY name", new { tenantId }, ct).ConfigureAwait(false);
        foreach (var plan in plans)
        {
            var policy = ToPolicy(plan.ReadSpec().Retention);
            if (policy is null)
            {
                continue;
            }

            var jobs = await db.QueryAsync<RetainedJob>(
                """
                SELECT j.id AS JobId, j.client_id AS ClientId, j.snapshot_id AS SnapshotId, j.started AS Started, j.queued AS Queued, u.client_id AS Uploader
                FROM jobs j LEFT JOIN snapshot_uploads u ON u.tenant_id = j.tenant_id AND u.name = j.snapshot_id
                WHERE j.plan_id = @plan AND j.kind = 'backup' AND j.state IN ('succeeded', 'partial') AND j.snapshot_id IS NOT NULL AND j.forgotten IS NULL
                """,
                new { plan = plan.Id }, ct).ConfigureAwait(false);
            foreach (var client in jobs.GroupBy(j => j.ClientId))
            {
                // One entry per snapshot (a resent report names it once more); the policy sees times as the snapshots have them.
                var snapshots = client.Where(j => ObjectId.TryParse(j.SnapshotId, out _)).GroupBy(j => j.SnapshotId).Select(g => g.First()).ToList();
                var entries = snapshots.Select(j => (ObjectId.Parse(j.SnapshotId), new Snapshot { Time = j.Time, Tree = "", Paths = [], Hostname = client.Key })).ToList();
                foreach (var group in RetentionPolicy.Apply(entries, policy, SnapshotGrouping.None))
                {
                    foreach (var (id, _) in group.Remove)
                    {
                        var job = snapshots.First(j => j.SnapshotId == id.ToString());
                        if (job.Uploader != client.Key)
                        {
                            refused++;
                            log.LogWarning("tenant {Tenant}: job {Job} names snapshot {Snapshot}, which its client did not upload; retention leaves it", tenantId, job.JobId, id.Short);
                            continue;
                        }

                        await store.DeleteAsync(new StoreHandle(FileKind.Snapshot, id.ToString()), ct).ConfigureAwait(false);
                        await db.ExecuteAsync(
                            "UPDATE jobs SET forgotten = @now WHERE tenant_id = @tenantId AND client_id = @client AND snapshot_id = @snapshot",
                            new { now = Clock.Format(time.GetUtcNow()), tenantId, client = client.Key, snapshot = id.ToString() }, ct).ConfigureAwait(false);
                        forgotten.Add(id.ToString());
                    }
                }
            }
        }

        return refused;
    }

    private async Task<(PruneResult? Result, string? Skipped)> PruneIfDueAsync(string tenantId, IStore store, CancellationToken ct)
    {
        if (await db.QuerySingleOrDefaultAsync<long>("SELECT prune_due FROM tenants WHERE id = @tenantId", new { tenantId }, ct).ConfigureAwait(false) == 0)
        {
            return (null, "nothing was forgotten since the last prune");
        }

        if (keys.Get(tenantId) is not { } key)
        {
            return (null, "the server holds no key to this repository, so it cannot prune (haven admin repository --server-key, or prune from an administrator's machine)");
        }

        await using var repo = await Repository.Repository.OpenAsync(store, key.Secret, time, ct).ConfigureAwait(false);
        RepositoryLock held;
        try
        {
            held = await RepositoryLock.AcquireAsync(repo, exclusive: true, "server maintenance (prune)", TimeSpan.Zero, ct).ConfigureAwait(false);
        }
        catch (HavenException e) when (e.Code == ErrorCode.LockConflict)
        {
            return (null, "the repository is locked (a backup or an administrator's command is running); the next round tries again");
        }

        await using (held)
        {
            var result = await new Pruner(repo).RunAsync(held, ct).ConfigureAwait(false);
            await db.ExecuteAsync("UPDATE tenants SET prune_due = 0 WHERE id = @tenantId", new { tenantId }, ct).ConfigureAwait(false);
            return (result, null);
        }
    }

    /// <summary>The engine's policy for a plan's retention, or null when the plan keeps everything.</summary>
    internal static RetentionPolicy? ToPolicy(RetentionSpec? spec)
    {
        if (spec is null)
        {
            return null;
        }

        var policy = new RetentionPolicy
        {
            Last = spec.KeepLast ?? 0,
            Hourly = spec.KeepHourly ?? 0,
            Daily = spec.KeepDaily ?? 0,
            Weekly = spec.KeepWeekly ?? 0,
            Monthly = spec.KeepMonthly ?? 0,
            Yearly = spec.KeepYearly ?? 0,
        };
        return policy.IsEmpty ? null : policy;
    }
}
