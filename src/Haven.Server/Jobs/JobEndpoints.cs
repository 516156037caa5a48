using System.Text.Json;
using Dapper;
using Haven.Core;
using Haven.Protocol;
using Haven.Server.Api;
using Haven.Server.Database;
using Haven.Server.Security;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;

namespace Haven.Server.Jobs;

/// <summary>
/// Groups, plans, jobs, restores and notification targets for administrators (tenant and role checked on every
/// call; another tenant's objects answer as missing ones), and polling and reporting for agents.
/// </summary>
internal static class JobEndpoints
{
    public static void Map(IEndpointRouteBuilder app)
    {
        app.MapGet("/api/v1/tenants/{tenant}/groups", ListGroupsAsync).Returns<List<GroupInfo>>(ApiDocs.Admin, "Client groups of a tenant with their members");
        app.MapPost("/api/v1/tenants/{tenant}/groups", CreateGroupAsync).Returns<GroupInfo>(ApiDocs.Admin, "Create a client group", StatusCodes.Status201Created);
        app.MapPost("/api/v1/tenants/{tenant}/groups/{group}/clients/{client}", AddMemberAsync).ReturnsNothing(ApiDocs.Admin, "Add a client to a group");
        app.MapGet("/api/v1/tenants/{tenant}/plans", ListPlansAsync).Returns<List<PlanInfo>>(ApiDocs.Admin, "Backup plans of a tenant");
        app.MapPost("/api/v1/tenants/{tenant}/plans", CreatePlanAsync).Returns<PlanInfo>(ApiDocs.Admin, "Create a plan for a client or a group: paths, excludes, schedule, ready-run, retention, bandwidth", StatusCodes.Status201Created);
        app.MapDelete("/api/v1/tenants/{tenant}/plans/{plan}", DeletePlanAsync).ReturnsNothing(ApiDocs.Admin, "Delete a plan");
        app.MapPost("/api/v1/tenants/{tenant}/clients/{client}/run", RunNowAsync).Returns<List<JobInfo>>(ApiDocs.Admin, "Run a client's plans now (one, or all)", StatusCodes.Status201Created);
        app.MapGet("/api/v1/tenants/{tenant}/jobs", ListJobsAsync).Returns<List<JobInfo>>(ApiDocs.Admin, "Jobs of a tenant (or one client), newest first");
        app.MapGet("/api/v1/tenants/{tenant}/jobs/{job}", GetJobAsync).Returns<JobInfo>(ApiDocs.Admin, "One job: state, progress, snapshot, sizes, counts, errors");
        app.MapPost("/api/v1/tenants/{tenant}/restores", RestoreAsync).Returns<JobInfo>(ApiDocs.Admin, "Restore a snapshot, whole or some paths, onto a client of the tenant", StatusCodes.Status201Created);
        app.MapGet("/api/v1/tenants/{tenant}/notifications", ListTargetsAsync).Returns<List<NotificationTarget>>(ApiDocs.Admin, "Where the end of each job is announced (webhooks, email)");
        app.MapPost("/api/v1/tenants/{tenant}/notifications", CreateTargetAsync).Returns<NotificationTarget>(ApiDocs.Admin, "Add a webhook or email target", StatusCodes.Status201Created);
        app.MapDelete("/api/v1/tenants/{tenant}/notifications/{target}", DeleteTargetAsync).ReturnsNothing(ApiDocs.Admin, "Remove a notification target");

        app.MapPost("/api/v1/agent/poll", PollAsync).Returns<PollResponse>(ApiDocs.Agent, "Wait (long poll) for the next job assigned to the calling client");
        app.MapPost("/api/v1/agent/jobs/{job}/report", ReportAsync).ReturnsNothing(ApiDocs.Agent, "Report a job's progress or its end");
        app.MapGet("/api/v1/agent/plans", AgentPlansAsync).Returns<List<PlanInfo>>(ApiDocs.Agent, "The plans that apply to the calling client");
    }

    /// <summary>A client of the tenant by id or name, or null.</summary>
    private static Task<ClientRow?> FindClientAsync(ManagementDb db, string tenant, string client, CancellationToken ct) =>
        db.QuerySingleOrDefaultAsync<ClientRow>(
            "SELECT id AS Id, name AS Name, revoked AS Revoked FROM clients WHERE tenant_id = @tenant AND (id = @client OR name = @client)", new { tenant, client }, ct);

    private sealed record ClientRow(string Id, string Name, string? Revoked);

    /// <summary>A group of the tenant by id or name, or null.</summary>
    private static Task<NamedRow?> FindGroupAsync(ManagementDb db, string tenant, string group, CancellationToken ct) =>
        db.QuerySingleOrDefaultAsync<NamedRow>("SELECT id AS Id, name AS Name FROM client_groups WHERE tenant_id = @tenant AND (id = @group OR name = @group)", new { tenant, group }, ct);

    private static string Actor(HttpContext context) => $"admin:{context.Admin().Name}";

    // ---- groups -----------------------------------------------------------------------------------------------

    private static async Task<IResult> ListGroupsAsync(HttpContext context, string tenant, ManagementDb db)
    {
        if (await context.TenantAccessAsync(db, tenant, write: false).ConfigureAwait(false) is { } refusal)
        {
            return refusal;
        }

        var groups = await db.QueryAsync<NamedRow>("SELECT id AS Id, name AS Name FROM client_groups WHERE tenant_id = @tenant ORDER BY name", new { tenant }, context.RequestAborted).ConfigureAwait(false);
        var members = await db.QueryAsync<MemberRow>(
            "SELECT m.group_id AS GroupId, m.client_id AS ClientId FROM group_members m JOIN client_groups g ON g.id = m.group_id WHERE g.tenant_id = @tenant", new { tenant }, context.RequestAborted).ConfigureAwait(false);
        var byGroup = members.ToLookup(m => m.GroupId, m => m.ClientId);
        return ApiResults.Ok(groups.Select(g => new GroupInfo(g.Id, tenant, g.Name, byGroup[g.Id].ToList())).ToList());
    }

    private sealed record NamedRow(string Id, string Name);

    private sealed record MemberRow(string GroupId, string ClientId);

    private static async Task<IResult> CreateGroupAsync(HttpContext context, string tenant, CreateGroupRequest request, ManagementDb db, Audit audit, TimeProvider time)
    {
        if (await context.TenantAccessAsync(db, tenant, write: true).ConfigureAwait(false) is { } refusal)
        {
            return refusal;
        }

        if (!ApiResults.IsValidName(request.Name))
        {
            return ApiResults.BadRequest($"'{request.Name}' is not a valid group name", "use 1-64 letters, digits, '.', '_', '-'");
        }

        var ct = context.RequestAborted;
        var clients = new List<string>();
        foreach (var name in request.Clients ?? [])
        {
            var client = await FindClientAsync(db, tenant, name, ct).ConfigureAwait(false);
            if (client is null)
            {
                return ApiResults.NotFound($"client {name}");
            }

            clients.Add(client.Id);
        }

        string id = Secrets.NewId();
        try
        {
            await db.InTransactionAsync(async (c, tx) =>
            {
                await c.ExecuteAsync("INSERT INTO client_groups (id, tenant_id, name, created) VALUES (@id, @tenant, @name, @now)", new { id, tenant, name = request.Name, now = Clock.Format(time.GetUtcNow()) }, tx).ConfigureAwait(false);
                foreach (var client in clients.Distinct())
                {
                    await c.ExecuteAsync("INSERT INTO group_members (group_id, client_id) VALUES (@id, @client)", new { id, client }, tx).ConfigureAwait(false);
                }

                return 0;
            }, ct).ConfigureAwait(false);
        }
        catch (System.Data.Common.DbException) // the name is unique per tenant
        {
            return ApiResults.Error(StatusCodes.Status409Conflict, "conflict", $"a group named {request.Name} exists");
        }

        await audit.WriteAsync(Actor(context), tenant, "group.create", $"group {request.Name} with {clients.Count} client(s)", ct).ConfigureAwait(false);
        return ApiResults.Created(new GroupInfo(id, tenant, request.Name, clients));
    }

    private static async Task<IResult> AddMemberAsync(HttpContext context, string tenant, string group, string client, ManagementDb db, Audit audit)
    {
        if (await context.TenantAccessAsync(db, tenant, write: true).ConfigureAwait(false) is { } refusal)
        {
            return refusal;
        }

        var ct = context.RequestAborted;
        var g = await FindGroupAsync(db, tenant, group, ct).ConfigureAwait(false);
        var c = await FindClientAsync(db, tenant, client, ct).ConfigureAwait(false);
        if (g is null || c is null)
        {
            return ApiResults.NotFound(g is null ? $"group {group}" : $"client {client}");
        }

        await db.ExecuteAsync("INSERT INTO group_members (group_id, client_id) VALUES (@g, @c) ON CONFLICT DO NOTHING", new { g = g.Id, c = c.Id }, ct).ConfigureAwait(false);
        await audit.WriteAsync(Actor(context), tenant, "group.add", $"client {c.Name} added to group {g.Name}", ct).ConfigureAwait(false);
        return Results.NoContent();
    }

    // ---- plans ------------------------------------------------------------------------------------------------

    private static async Task<IResult> ListPlansAsync(HttpContext context, string tenant, ManagementDb db)
    {
        if (await context.TenantAccessAsync(db, tenant, write: false).ConfigureAwait(false) is { } refusal)
        {
            return refusal;
        }

        var rows = await db.QueryAsync<JobService.PlanRow>(
            $"SELECT {JobService.PlanColumns} FROM plans WHERE tenant_id = @tenant ORDER BY name",
            new { tenant }, context.RequestAborted).ConfigureAwait(false);
        return ApiResults.Ok(rows.Select(r => r.ToInfo()).ToList());
    }

    private static async Task<IResult> CreatePlanAsync(HttpContext context, string tenant, PlanSpec spec, ManagementDb db, Audit audit, TimeProvider time)
    {
        if (await context.TenantAccessAsync(db, tenant, write: true).ConfigureAwait(false) is { } refusal)
        {
            return refusal;
        }

        var ct = context.RequestAborted;
        if (!ApiResults.IsValidName(spec.Name))
        {
            return ApiResults.BadRequest($"'{spec.Name}' is not a valid plan name", "use 1-64 letters, digits, '.', '_', '-'");
        }

        if (spec.Paths is not { Count: > 0 } || spec.Paths.Any(p => string.IsNullOrEmpty(p) || p[0] != '/'))
        {
            return ApiResults.BadRequest("a plan needs one or more absolute paths to back up");
        }

        if (spec.Kind is not (null or PlanKinds.Files or PlanKinds.Image))
        {
            return ApiResults.BadRequest($"'{spec.Kind}' is not a plan kind", "use files or image");
        }

        if (spec.Kind == PlanKinds.Image && (spec.Paths.Count != 1 || spec.Excludes is { Count: > 0 }))
        {
            return ApiResults.BadRequest("an image plan backs up one disk, partition or image file, without excludes", "make one plan per disk");
        }

        if (spec.BlockSize is { } blockSize && (spec.Kind != PlanKinds.Image || blockSize < 4096 || blockSize > 16 << 20 || (blockSize & (blockSize - 1)) != 0))
        {
            return ApiResults.BadRequest("a block size is for image plans, and a power of two from 4 KiB to 16 MiB");
        }

        if ((spec.Client is null) == (spec.Group is null))
        {
            return ApiResults.BadRequest("a plan applies to one client or to one group: give exactly one of client and group");
        }

        if (spec.BandwidthBytesPerSecond is <= 0)
        {
            return ApiResults.BadRequest("a bandwidth limit is a positive number of bytes per second");
        }

        DateTimeOffset? next = null;
        if (spec.Schedule is { } scheduleText)
        {
            try
            {
                next = Schedule.Parse(scheduleText).Next(time.GetUtcNow());
            }
            catch (HavenException e)
            {
                return ApiResults.BadRequest(e.Message, e.Hint);
            }
        }

        string? clientId = null, groupId = null;
        if (spec.Client is { } client)
        {
            clientId = (await FindClientAsync(db, tenant, client, ct).ConfigureAwait(false))?.Id;
            if (clientId is null)
            {
                return ApiResults.NotFound($"client {client}");
            }
        }
        else
        {
            groupId = (await FindGroupAsync(db, tenant, spec.Group!, ct).ConfigureAwait(false))?.Id;
            if (groupId is null)
            {
                return ApiResults.NotFound($"group {spec.Group}");
            }
        }

        string id = Secrets.NewId();
        var now = time.GetUtcNow();
        try
        {
            await db.ExecuteAsync(
                "INSERT INTO plans (id, tenant_id, name, client_id, group_id, spec, schedule, next_run, run_on_ready, created) VALUES (@id, @tenant, @name, @clientId, @groupId, @spec, @schedule, @next, @ready, @now)",
                new { id, tenant, name = spec.Name, clientId, groupId, spec = JsonSerializer.Serialize(spec, ProtocolJson.Options), schedule = spec.Schedule, next = next is { } n ? Clock.Format(n) : null, ready = spec.RunOnReady ? 1L : 0L, now = Clock.Format(now) },
                ct).ConfigureAwait(false);
        }
        catch (System.Data.Common.DbException) // the name is unique per tenant
        {
            return ApiResults.Error(StatusCodes.Status409Conflict, "conflict", $"a plan named {spec.Name} exists");
        }

        await audit.WriteAsync(Actor(context), tenant, "plan.create", $"{PlanKinds.Of(spec)} plan {spec.Name} for {(spec.Client is { } x ? $"client {x}" : $"group {spec.Group}")}: {string.Join(", ", spec.Paths)}; schedule {spec.Schedule ?? "none"}", ct).ConfigureAwait(false);
        return ApiResults.Created(new PlanInfo(id, tenant, spec, clientId, groupId, next, now));
    }

    private static async Task<IResult> DeletePlanAsync(HttpContext context, string tenant, string plan, ManagementDb db, Audit audit)
    {
        if (await context.TenantAccessAsync(db, tenant, write: true).ConfigureAwait(false) is { } refusal)
        {
            return refusal;
        }

        var ct = context.RequestAborted;
        var row = await db.QuerySingleOrDefaultAsync<NamedRow>("SELECT id AS Id, name AS Name FROM plans WHERE tenant_id = @tenant AND (id = @plan OR name = @plan)", new { tenant, plan }, ct).ConfigureAwait(false);
        if (row is null)
        {
            return ApiResults.NotFound($"plan {plan}");
        }

        await db.InTransactionAsync(async (c, tx) =>
        {
            // Finished jobs keep their record; queued ones go with the plan.
            await c.ExecuteAsync("DELETE FROM jobs WHERE plan_id = @id AND state = 'queued'", new { id = row.Id }, tx).ConfigureAwait(false);
            await c.ExecuteAsync("UPDATE jobs SET plan_id = NULL WHERE plan_id = @id", new { id = row.Id }, tx).ConfigureAwait(false);
            await c.ExecuteAsync("DELETE FROM plans WHERE id = @id", new { id = row.Id }, tx).ConfigureAwait(false);
            return 0;
        }, ct).ConfigureAwait(false);
        await audit.WriteAsync(Actor(context), tenant, "plan.delete", $"plan {row.Name} deleted", ct).ConfigureAwait(false);
        return Results.NoContent();
    }

    // ---- jobs -------------------------------------------------------------------------------------------------

    private static async Task<IResult> RunNowAsync(HttpContext context, string tenant, string client, RunNowRequest request, ManagementDb db, JobService jobs, Audit audit)
    {
        if (await context.TenantAccessAsync(db, tenant, write: true).ConfigureAwait(false) is { } refusal)
        {
            return refusal;
        }

        var ct = context.RequestAborted;
        var c = await FindClientAsync(db, tenant, client, ct).ConfigureAwait(false);
        if (c is null)
        {
            return ApiResults.NotFound($"client {client}");
        }

        if (c.Revoked is not null)
        {
            return ApiResults.BadRequest($"client {c.Name} is revoked");
        }

        var plans = (await jobs.PlansOfClientAsync(tenant, c.Id, ct).ConfigureAwait(false)).Where(p => request.Plan is null || p.Id == request.Plan || p.Name == request.Plan).ToList();
        if (plans.Count == 0)
        {
            return ApiResults.NotFound(request.Plan is null ? $"a plan for client {c.Name}" : $"plan {request.Plan} for client {c.Name}");
        }

        var ids = new List<string>();
        foreach (var plan in plans)
        {
            ids.Add((await jobs.QueueBackupAsync(tenant, c.Id, plan.Id, "manual", ct).ConfigureAwait(false)).JobId);
        }

        await audit.WriteAsync(Actor(context), tenant, "job.run", $"run now on client {c.Name}: {string.Join(", ", plans.Select(p => p.Name))}", ct).ConfigureAwait(false);
        var infos = new List<JobInfo>();
        foreach (var id in ids)
        {
            infos.Add((await jobs.GetAsync(id, ct).ConfigureAwait(false))!);
        }

        return ApiResults.Created(infos);
    }

    private static async Task<IResult> ListJobsAsync(HttpContext context, string tenant, string? client, int? limit, ManagementDb db, JobService jobs)
    {
        if (await context.TenantAccessAsync(db, tenant, write: false).ConfigureAwait(false) is { } refusal)
        {
            return refusal;
        }

        string? clientId = null;
        if (client is not null)
        {
            clientId = (await FindClientAsync(db, tenant, client, context.RequestAborted).ConfigureAwait(false))?.Id;
            if (clientId is null)
            {
                return ApiResults.NotFound($"client {client}");
            }
        }

        return ApiResults.Ok(await jobs.ListAsync(tenant, clientId, Math.Clamp(limit ?? 100, 1, 10_000), context.RequestAborted).ConfigureAwait(false));
    }

    private static async Task<IResult> GetJobAsync(HttpContext context, string tenant, string job, ManagementDb db, JobService jobs)
    {
        if (await context.TenantAccessAsync(db, tenant, write: false).ConfigureAwait(false) is { } refusal)
        {
            return refusal;
        }

        var info = await jobs.GetAsync(job, context.RequestAborted).ConfigureAwait(false);
        return info is null || info.TenantId != tenant ? ApiResults.NotFound($"job {job}") : ApiResults.Ok(info);
    }

    private static async Task<IResult> RestoreAsync(HttpContext context, string tenant, RestoreRequest request, ManagementDb db, JobService jobs, Audit audit)
    {
        if (await context.TenantAccessAsync(db, tenant, write: true).ConfigureAwait(false) is { } refusal)
        {
            return refusal;
        }

        var ct = context.RequestAborted;
        var c = await FindClientAsync(db, tenant, request.Client, ct).ConfigureAwait(false);
        if (c is null)
        {
            return ApiResults.NotFound($"client {request.Client}");
        }

        if (c.Revoked is not null)
        {
            return ApiResults.BadRequest($"client {c.Name} is revoked");
        }

        if (string.IsNullOrEmpty(request.Snapshot) || request.Snapshot.Length > 64 || !request.Snapshot.All(char.IsAsciiHexDigitLower) && request.Snapshot != "latest")
        {
            return ApiResults.BadRequest($"'{request.Snapshot}' is not a snapshot id (hex, or a prefix of one)");
        }

        if (string.IsNullOrEmpty(request.Target) || request.Target[0] != '/')
        {
            return ApiResults.BadRequest("the restore target must be an absolute path on the client");
        }

        string id = await jobs.QueueRestoreAsync(tenant, c.Id, new RestoreSpec(request.Snapshot, request.Target, request.Paths, request.Grow), "manual", ct).ConfigureAwait(false);
        await audit.WriteAsync(Actor(context), tenant, "job.restore", $"restore of snapshot {request.Snapshot} onto client {c.Name} at {request.Target}", ct).ConfigureAwait(false);
        return ApiResults.Created((await jobs.GetAsync(id, ct).ConfigureAwait(false))!);
    }

    // ---- notifications ----------------------------------------------------------------------------------------

    private static async Task<IResult> ListTargetsAsync(HttpContext context, string tenant, ManagementDb db)
    {
        if (await context.TenantAccessAsync(db, tenant, write: false).ConfigureAwait(false) is { } refusal)
        {
            return refusal;
        }

        return ApiResults.Ok(await db.QueryAsync<NotificationTarget>("SELECT id AS Id, kind AS Kind, address AS Address FROM notification_targets WHERE tenant_id = @tenant ORDER BY created", new { tenant }, context.RequestAborted).ConfigureAwait(false));
    }

    private static async Task<IResult> CreateTargetAsync(HttpContext context, string tenant, CreateNotificationTarget request, ManagementDb db, Audit audit, TimeProvider time)
    {
        if (await context.TenantAccessAsync(db, tenant, write: true).ConfigureAwait(false) is { } refusal)
        {
            return refusal;
        }

        bool valid = request.Kind switch
        {
            "webhook" => Uri.TryCreate(request.Address, UriKind.Absolute, out var u) && u.Scheme is "http" or "https",
            "email" => System.Net.Mail.MailAddress.TryCreate(request.Address, out _),
            _ => false,
        };
        if (!valid)
        {
            return ApiResults.BadRequest($"'{request.Address}' is not a {request.Kind} target", "kind 'webhook' takes an http(s) URL, kind 'email' an email address");
        }

        var target = new NotificationTarget(Secrets.NewId(), request.Kind, request.Address);
        await db.ExecuteAsync("INSERT INTO notification_targets (id, tenant_id, kind, address, created) VALUES (@Id, @tenant, @Kind, @Address, @now)",
            new { target.Id, tenant, target.Kind, target.Address, now = Clock.Format(time.GetUtcNow()) }, context.RequestAborted).ConfigureAwait(false);
        await audit.WriteAsync(Actor(context), tenant, "notification.create", $"{target.Kind} {target.Address}", context.RequestAborted).ConfigureAwait(false);
        return ApiResults.Created(target);
    }

    private static async Task<IResult> DeleteTargetAsync(HttpContext context, string tenant, string target, ManagementDb db, Audit audit)
    {
        if (await context.TenantAccessAsync(db, tenant, write: true).ConfigureAwait(false) is { } refusal)
        {
            return refusal;
        }

        int n = await db.ExecuteAsync("DELETE FROM notification_targets WHERE tenant_id = @tenant AND id = @target", new { tenant, target }, context.RequestAborted).ConfigureAwait(false);
        if (n == 0)
        {
            return ApiResults.NotFound($"notification target {target}");
        }

        await audit.WriteAsync(Actor(context), tenant, "notification.delete", target, context.RequestAborted).ConfigureAwait(false);
        return Results.NoContent();
    }

    // ---- agents -----------------------------------------------------------------------------------------------

    private static async Task<IResult> PollAsync(HttpContext context, PollRequest request, JobService jobs, ManagementDb db, TimeProvider time)
    {
        var agent = context.Agent();
        await db.ExecuteAsync("UPDATE clients SET last_seen = @now WHERE id = @id", new { now = Clock.Format(time.GetUtcNow()), id = agent.ClientId }, context.RequestAborted).ConfigureAwait(false);
        var wait = TimeSpan.FromSeconds(Math.Clamp(request.WaitSeconds, 0, 60));
        try
        {
            return ApiResults.Ok(new PollResponse(await jobs.PollAsync(agent, wait, context.RequestAborted).ConfigureAwait(false)));
        }
        catch (OperationCanceledException) when (context.RequestAborted.IsCancellationRequested)
        {
            return Results.Empty; // the agent went away while it waited
        }
    }

    private static async Task<IResult> ReportAsync(HttpContext context, string job, JobReport report, JobService jobs)
    {
        if (!JobStates.IsKnown(report.State) || report.State == JobStates.Queued)
        {
            return ApiResults.BadRequest($"'{report.State}' is not a state an agent reports", "running, verifying, succeeded, partial, failed or interrupted");
        }

        return await jobs.ReportAsync(context.Agent(), job, report, context.RequestAborted).ConfigureAwait(false)
            ? Results.NoContent()
            : ApiResults.NotFound($"job {job}");
    }

    private static async Task<IResult> AgentPlansAsync(HttpContext context, JobService jobs)
    {
        var agent = context.Agent();
        var plans = await jobs.PlansOfClientAsync(agent.TenantId, agent.ClientId, context.RequestAborted).ConfigureAwait(false);
        return ApiResults.Ok(plans.Select(p => p.ToInfo()).ToList());
    }
}
