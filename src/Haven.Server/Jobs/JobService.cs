using System.Collections.Concurrent;
using System.Text.Json;
using Dapper;
using Haven.Protocol;
using Haven.Server.Api;
using Haven.Server.Database;
using Haven.Server.Security;
using Microsoft.Extensions.Logging;

namespace Haven.Server.Jobs;

/// <summary>Timings of job administration; the defaults suit production, tests shorten them.</summary>
public sealed record JobOptions
{
    /// <summary>How often the scheduler looks for due plans, silent jobs and missed schedules.</summary>
    public TimeSpan TickInterval { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>A running job with no report for this long is marked interrupted (agents report every few seconds).</summary>
    public TimeSpan StaleAfter { get; init; } = TimeSpan.FromSeconds(90);

    /// <summary>A scheduled job still queued after this long counts as a missed schedule (the client was away).</summary>
    public TimeSpan MissedAfter { get; init; } = TimeSpan.FromHours(1);

    /// <summary>A ready signal starts a plan (with run-on-ready) only when its last success is older than this.</summary>
    public TimeSpan ReadyMinInterval { get; init; } = TimeSpan.FromHours(1);

    /// <summary>How often each tenant's repository is maintained: retention applied, then a prune when the server holds a key.</summary>
    public TimeSpan MaintenanceInterval { get; init; } = TimeSpan.FromHours(1);
}

/// <summary>
/// Decides and records every job: queues them (schedule, ready signal, "run now", restore), hands them to agents
/// that poll, takes their reports, and notices jobs that went silent (interrupted) and schedules that were missed.
/// State lives in the management database, so several server instances can share the work; wake-ups of waiting
/// agents are in memory, with a periodic database check behind them.
/// </summary>
public sealed class JobService(ManagementDb db, TimeProvider time, Audit audit, Notifier notifier, JobOptions options, ILogger<JobService> log)
{
    private readonly ConcurrentDictionary<string, TaskCompletionSource> _wakeups = new();

    public JobOptions Options => options;

    private static readonly JsonSerializerOptions Json = ProtocolJson.Options;

    private const string JobColumns = """
        id AS Id, tenant_id AS TenantId, client_id AS ClientId, plan_id AS PlanId, kind AS Kind, trigger AS Trigger, state AS State,
        queued AS Queued, started AS Started, finished AS Finished, last_report AS LastReport, missed AS Missed,
        snapshot_id AS SnapshotId, stats AS Stats, progress AS Progress, message AS Message, params AS Params, forgotten AS Forgotten
        """;

    internal const string PlanColumns = "id AS Id, tenant_id AS TenantId, name AS Name, client_id AS ClientId, group_id AS GroupId, spec AS Spec, schedule AS Schedule, next_run AS NextRun, run_on_ready AS RunOnReady, created AS Created";

    // ---- queueing ---------------------------------------------------------------------------------------------

    /// <summary>
    /// Queues a backup of <paramref name="planId"/> on <paramref name="clientId"/>, unless one is already queued or
    /// running (then its id is returned and nothing is added). Returns the job id and whether it is new.
    /// </summary>
    public async Task<(string JobId, bool Added)> QueueBackupAsync(string tenantId, string clientId, string planId, string trigger, CancellationToken ct)
    {
        var result = await db.InTransactionAsync(async (c, tx) =>
        {
            if (db.Dialect == SqlDialect.PostgreSql)
            {
                // Check-then-insert must not interleave (SQLite's BEGIN IMMEDIATE serialises it already).
                await c.ExecuteAsync("SELECT pg_advisory_xact_lock(hashtext(@clientId))", new { clientId }, tx).ConfigureAwait(false);
            }

            string? active = await c.QuerySingleOrDefaultAsync<string>(
                "SELECT id FROM jobs WHERE client_id = @clientId AND plan_id = @planId AND state IN ('queued', 'running', 'verifying')",
                new { clientId, planId }, tx).ConfigureAwait(false);
            if (active is not null)
            {
                return (active, false);
            }

            string id = Secrets.NewId();
            await c.ExecuteAsync(
                "INSERT INTO jobs (id, tenant_id, client_id, plan_id, kind, trigger, state, queued) VALUES (@id, @tenantId, @clientId, @planId, 'backup', @trigger, 'queued', @now)",
                new { id, tenantId, clientId, planId, trigger, now = Clock.Format(time.GetUtcNow()) }, tx).ConfigureAwait(false);
            return (id, true);
        }, ct).ConfigureAwait(false);
        if (result.Item2)
        {
            Wake(clientId);
        }

        return result;
    }

    /// <summary>Queues a restore onto <paramref name="clientId"/>.</summary>
    public async Task<string> QueueRestoreAsync(string tenantId, string clientId, RestoreSpec restore, string trigger, CancellationToken ct)
    {
        string id = Secrets.NewId();
        await db.ExecuteAsync(
            "INSERT INTO jobs (id, tenant_id, client_id, plan_id, kind, trigger, state, queued, params) VALUES (@id, @tenantId, @clientId, NULL, 'restore', @trigger, 'queued', @now, @params)",
            new { id, tenantId, clientId, trigger, now = Clock.Format(time.GetUtcNow()), @params = JsonSerializer.Serialize(restore, Json) }, ct).ConfigureAwait(false);
        Wake(clientId);
        return id;
    }

    /// <summary>The plans that apply to a client: its own and its groups'.</summary>
    public Task<IReadOnlyList<PlanRow>> PlansOfClientAsync(string tenantId, string clientId, CancellationToken ct) =>
        db.QueryAsync<PlanRow>(
            $"SELECT {PlanColumns} FROM plans WHERE tenant_id = @tenantId AND (client_id = @clientId OR group_id IN (SELECT group_id FROM group_members WHERE client_id = @clientId)) ORDER BY name",
            new { tenantId, clientId }, ct);

    /// <summary>
    /// A client's ready signal: "manual" (haven agent backup-now) starts every plan of the client; any other reason
    /// starts the plans marked run-on-ready whose last success is older than <see cref="JobOptions.ReadyMinInterval"/>.
    /// </summary>
    public async Task<int> OnReadyAsync(AgentPrincipal agent, string reason, CancellationToken ct)
    {
        int queued = 0;
        var cutoff = Clock.Format(time.GetUtcNow() - options.ReadyMinInterval);
        foreach (var plan in await PlansOfClientAsync(agent.TenantId, agent.ClientId, ct).ConfigureAwait(false))
        {
            if (reason != "manual")
            {
                if (plan.RunOnReady == 0)
                {
                    continue;
                }

                string? last = await db.QuerySingleOrDefaultAsync<string>(
                    "SELECT MAX(finished) FROM jobs WHERE client_id = @clientId AND plan_id = @planId AND state IN ('succeeded', 'partial')",
                    new { clientId = agent.ClientId, planId = plan.Id }, ct).ConfigureAwait(false);
                if (last is not null && string.CompareOrdinal(last, cutoff) > 0)
                {
                    continue;
                }
            }

            if ((await QueueBackupAsync(agent.TenantId, agent.ClientId, plan.Id, reason == "manual" ? "manual" : "ready", ct).ConfigureAwait(false)).Added)
            {
                queued++;
            }
        }

        return queued;
    }

    // ---- the agent's side -------------------------------------------------------------------------------------

    /// <summary>
    /// Hands the client's oldest queued job to its agent, waiting up to <paramref name="wait"/> for one. An agent
    /// polls only while it runs nothing, so a job the database still shows as running on that client was cut off
    /// (the agent was killed or restarted): it is marked interrupted first.
    /// </summary>
    public async Task<IReadOnlyList<JobAssignment>> PollAsync(AgentPrincipal agent, TimeSpan wait, CancellationToken ct)
    {
        var now = Clock.Format(time.GetUtcNow());
        var cut = await db.QueryAsync<JobRow>($"SELECT {JobColumns} FROM jobs WHERE client_id = @clientId AND state IN ('running', 'verifying')", new { clientId = agent.ClientId }, ct).ConfigureAwait(false);
        foreach (var job in cut)
        {
            await FinishAsync(job, JobStates.Interrupted, "the agent stopped while the job ran (restarted or killed); the next run resumes it", ct).ConfigureAwait(false);
        }

        var deadline = time.GetUtcNow() + wait;
        while (true)
        {
            var signal = _wakeups.GetOrAdd(agent.ClientId, _ => new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously));
            var assignment = await TryDispatchAsync(agent, ct).ConfigureAwait(false);
            if (assignment is not null)
            {
                return [assignment];
            }

            var left = deadline - time.GetUtcNow();
            if (left <= TimeSpan.Zero)
            {
                return [];
            }

            // Woken at once when a job is queued on this instance; other instances' jobs are seen within 5 s.
            try
            {
                await signal.Task.WaitAsync(left < TimeSpan.FromSeconds(5) ? left : TimeSpan.FromSeconds(5), time, ct).ConfigureAwait(false);
            }
            catch (TimeoutException)
            {
            }

            _wakeups.TryRemove(new KeyValuePair<string, TaskCompletionSource>(agent.ClientId, signal));
        }
    }

    private void Wake(string clientId)
    {
        if (_wakeups.TryRemove(clientId, out var signal))
        {
            signal.TrySetResult();
        }
    }

    private async Task<JobAssignment?> TryDispatchAsync(AgentPrincipal agent, CancellationToken ct)
    {
        var candidates = await db.QueryAsync<JobRow>(
            $"SELECT {JobColumns} FROM jobs WHERE client_id = @clientId AND state = 'queued' ORDER BY queued LIMIT 5", new { clientId = agent.ClientId }, ct).ConfigureAwait(false);
        foreach (var job in candidates)
        {
            string now = Clock.Format(time.GetUtcNow());
            // The claim is conditional, so two instances (or two polls) never hand out one job twice.
            int claimed = await db.ExecuteAsync(
                "UPDATE jobs SET state = 'running', started = @now, last_report = @now WHERE id = @id AND state = 'queued'", new { id = job.Id, now }, ct).ConfigureAwait(false);
            if (claimed != 1)
            {
                continue;
            }

            PlanSpec? plan = null;
            if (job.PlanId is not null)
            {
                var row = await db.QuerySingleOrDefaultAsync<PlanRow>($"SELECT {PlanColumns} FROM plans WHERE id = @id", new { id = job.PlanId }, ct).ConfigureAwait(false);
                if (row is null)
                {
                    await FinishAsync(job with { State = JobStates.Running }, JobStates.Failed, "the plan was deleted before the job ran", ct).ConfigureAwait(false);
                    continue;
                }

                plan = row.ReadSpec();
            }

            var restore = job.Params is null ? null : JsonSerializer.Deserialize<RestoreSpec>(job.Params, Json);
            log.LogInformation("job {Job} ({Kind}, {Trigger}) handed to client {Client}", job.Id[..8], job.Kind, job.Trigger, agent.Name);
            return new JobAssignment(job.Id, job.Kind, plan, restore);
        }

        return null;
    }

    /// <summary>
    /// Takes an agent's report on one of its jobs. The agent knows best what happened: a final report replaces an
    /// "interrupted" the server concluded from silence (e.g. while the server itself was restarting).
    /// Returns false when the job is not the agent's.
    /// </summary>
    public async Task<bool> ReportAsync(AgentPrincipal agent, string jobId, JobReport report, CancellationToken ct)
    {
        var job = await db.QuerySingleOrDefaultAsync<JobRow>($"SELECT {JobColumns} FROM jobs WHERE id = @jobId AND client_id = @clientId", new { jobId, clientId = agent.ClientId }, ct).ConfigureAwait(false);
        if (job is null)
        {
            return false;
        }

        string now = Clock.Format(time.GetUtcNow());
        if (!JobStates.IsFinal(report.State))
        {
            // Conditional, so a late progress report never reopens a job that ended (an "interrupted" the server
            // concluded from silence excepted).
            await db.ExecuteAsync(
                "UPDATE jobs SET state = @state, last_report = @now, progress = COALESCE(@progress, progress), started = COALESCE(started, @now), finished = NULL WHERE id = @id AND (finished IS NULL OR state = 'interrupted')",
                new { id = jobId, state = report.State, now, progress = report.Progress is null ? null : JsonSerializer.Serialize(report.Progress, Json) }, ct).ConfigureAwait(false);
            return true;
        }

        // Conditional too: the same final report again (the agent's queue resends after a lost answer) changes
        // nothing and is not announced twice.
        int changed = await db.ExecuteAsync(
            "UPDATE jobs SET state = @state, last_report = @now, finished = @finished, snapshot_id = @snapshot, stats = @stats, message = @message, progress = COALESCE(@progress, progress) WHERE id = @id AND NOT (state = @state AND finished IS NOT NULL)",
            new
            {
                id = jobId,
                state = report.State,
                now,
                finished = Clock.Format(report.Time ?? time.GetUtcNow()),
                snapshot = report.SnapshotId,
                stats = report.Stats is null ? null : JsonSerializer.Serialize(report.Stats, Json),
                message = report.Message,
                progress = report.Progress is null ? null : JsonSerializer.Serialize(report.Progress, Json),
            }, ct).ConfigureAwait(false);
        if (changed == 1)
        {
            notifier.JobEnded(jobId);
            await audit.WriteAsync($"client:{agent.Name}", agent.TenantId, $"job.{report.State}", $"{job.Kind} job {jobId[..8]} {report.State}{(report.Message is { } m ? ": " + m : "")}", CancellationToken.None).ConfigureAwait(false);
        }

        return true;
    }

    private async Task FinishAsync(JobRow job, string state, string message, CancellationToken ct)
    {
        string now = Clock.Format(time.GetUtcNow());
        int n = await db.ExecuteAsync(
            "UPDATE jobs SET state = @state, finished = @now, message = @message WHERE id = @id AND state = @old",
            new { id = job.Id, state, now, message, old = job.State }, ct).ConfigureAwait(false);
        if (n == 1)
        {
            log.LogWarning("job {Job} of client {Client}: {State}: {Message}", job.Id[..8], job.ClientId[..8], state, message);
            notifier.JobEnded(job.Id);
            await audit.WriteAsync("server", job.TenantId, $"job.{state}", $"{job.Kind} job {job.Id[..8]} {state}: {message}", CancellationToken.None).ConfigureAwait(false);
        }
    }

    // ---- the scheduler ----------------------------------------------------------------------------------------

    /// <summary>One round: due plans are queued, silent jobs interrupted, long-queued scheduled jobs marked missed.</summary>
    public async Task TickAsync(CancellationToken ct)
    {
        var now = time.GetUtcNow();
        string nowText = Clock.Format(now);
        var due = await db.QueryAsync<PlanRow>($"SELECT {PlanColumns} FROM plans WHERE schedule IS NOT NULL AND next_run <= @now", new { now = nowText }, ct).ConfigureAwait(false);
        foreach (var plan in due)
        {
            string next = Clock.Format(Schedule.Parse(plan.Schedule!).Next(now));
            // Claimed by moving next_run on, so one instance fires each occurrence once.
            if (await db.ExecuteAsync("UPDATE plans SET next_run = @next WHERE id = @id AND next_run = @old", new { next, id = plan.Id, old = plan.NextRun }, ct).ConfigureAwait(false) != 1)
            {
                continue;
            }

            foreach (var client in await TargetsAsync(plan, ct).ConfigureAwait(false))
            {
                await QueueBackupAsync(plan.TenantId, client, plan.Id, "schedule", ct).ConfigureAwait(false);
            }
        }

        var silent = await db.QueryAsync<JobRow>(
            $"SELECT {JobColumns} FROM jobs WHERE state IN ('running', 'verifying') AND last_report < @cutoff", new { cutoff = Clock.Format(now - options.StaleAfter) }, ct).ConfigureAwait(false);
        foreach (var job in silent)
        {
            await FinishAsync(job, JobStates.Interrupted, $"no report from the agent for {options.StaleAfter.TotalSeconds:0} s (client offline or killed); the next run resumes it", ct).ConfigureAwait(false);
        }

        var missed = await db.QueryAsync<JobRow>(
            $"SELECT {JobColumns} FROM jobs WHERE state = 'queued' AND trigger = 'schedule' AND missed = 0 AND queued < @cutoff", new { cutoff = Clock.Format(now - options.MissedAfter) }, ct).ConfigureAwait(false);
        foreach (var job in missed)
        {
            if (await db.ExecuteAsync("UPDATE jobs SET missed = 1 WHERE id = @id AND missed = 0", new { id = job.Id }, ct).ConfigureAwait(false) == 1)
            {
                string client = await db.QuerySingleOrDefaultAsync<string>("SELECT name FROM clients WHERE id = @id", new { id = job.ClientId }, ct).ConfigureAwait(false) ?? job.ClientId;
                log.LogWarning("client {Client} missed its scheduled backup (job {Job} queued at {Queued})", client, job.Id[..8], job.Queued);
                notifier.Missed(job.Id);
                await audit.WriteAsync("server", job.TenantId, "job.missed", $"client {client} missed its scheduled backup: job {job.Id[..8]} queued at {job.Queued} has not started", CancellationToken.None).ConfigureAwait(false);
            }
        }
    }

    /// <summary>The clients a plan applies to (revoked ones left out).</summary>
    public Task<IReadOnlyList<string>> TargetsAsync(PlanRow plan, CancellationToken ct) =>
        plan.ClientId is { } client
            ? db.QueryAsync<string>("SELECT id FROM clients WHERE id = @client AND revoked IS NULL", new { client }, ct)
            : db.QueryAsync<string>("SELECT c.id FROM clients c JOIN group_members m ON m.client_id = c.id WHERE m.group_id = @group AND c.revoked IS NULL", new { group = plan.GroupId }, ct);

    public async Task<JobInfo?> GetAsync(string jobId, CancellationToken ct)
    {
        var row = await db.QuerySingleOrDefaultAsync<JobRow>($"SELECT {JobColumns} FROM jobs WHERE id = @jobId", new { jobId }, ct).ConfigureAwait(false);
        return row?.ToInfo();
    }

    public async Task<IReadOnlyList<JobInfo>> ListAsync(string tenantId, string? clientId, int limit, CancellationToken ct)
    {
        var rows = await db.QueryAsync<JobRow>(
            $"SELECT {JobColumns} FROM jobs WHERE tenant_id = @tenantId AND (@clientId IS NULL OR client_id = @clientId) ORDER BY queued DESC LIMIT @limit",
            new { tenantId, clientId, limit = (long)limit }, ct).ConfigureAwait(false);
        return rows.Select(r => r.ToInfo()).ToList();
    }

    public sealed record PlanRow(string Id, string TenantId, string Name, string? ClientId, string? GroupId, string Spec, string? Schedule, string? NextRun, long RunOnReady, string Created)
    {
        public PlanSpec ReadSpec() => JsonSerializer.Deserialize<PlanSpec>(Spec, Json)!;

        public PlanInfo ToInfo() => new(Id, TenantId, ReadSpec(), ClientId, GroupId, Clock.ParseOrNull(NextRun), Clock.Parse(Created));
    }

    public sealed record JobRow(
        string Id, string TenantId, string ClientId, string? PlanId, string Kind, string Trigger, string State,
        string Queued, string? Started, string? Finished, string? LastReport, long Missed,
        string? SnapshotId, string? Stats, string? Progress, string? Message, string? Params, string? Forgotten)
    {
        public JobInfo ToInfo() => new(
            Id, TenantId, ClientId, PlanId, Kind, Trigger, State, Clock.Parse(Queued), Clock.ParseOrNull(Started), Clock.ParseOrNull(Finished), Missed != 0,
            SnapshotId,
            Stats is null ? null : JsonSerializer.Deserialize<JobStats>(Stats, Json),
            Progress is null ? null : JsonSerializer.Deserialize<JobProgress>(Progress, Json),
            Message,
            Params is null ? null : JsonSerializer.Deserialize<RestoreSpec>(Params, Json),
            Clock.ParseOrNull(Forgotten));
    }
}
