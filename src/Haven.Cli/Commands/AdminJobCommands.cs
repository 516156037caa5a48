using System.CommandLine;
using System.Text.Json;
using Haven.Cli.Infrastructure;
using Haven.Core;
using Haven.Protocol;

namespace Haven.Cli.Commands;

/// <summary><c>haven admin</c> commands for groups, plans, jobs, restores and notifications.</summary>
internal static class AdminJobCommands
{
    public static IEnumerable<Command> All() =>
        [GroupCreate(), Groups(), PlanCreate(), Plans(), PlanDelete(), RunNow(), Jobs(), Job(), Restore(), NotifyAdd(), Notifications()];

    private static Command GroupCreate()
    {
        var tenant = AdminCommand.TenantOption();
        var name = new Argument<string>("name") { Description = "The group's name" };
        var clients = new Option<string[]>("--client") { Description = "A client to put in the group (name or id); repeatable" };
        var c = new Command("group-create", "Create a group of clients (plans can apply to a group)") { tenant, name, clients };
        AdminCommand.SetHandler(c, tenant, async (ctx, api, t, ct) =>
        {
            var group = await api.PostAsync<GroupInfo>($"api/v1/tenants/{t}/groups", new CreateGroupRequest(ctx.Parse.GetValue(name)!, ctx.Parse.GetValue(clients)), ct);
            AdminCommand.Print(ctx, [group], g => $"created group {g.Name} ({g.Id}) with {g.ClientIds.Count} client(s)");
        });
        return c;
    }

    private static Command Groups()
    {
        var tenant = AdminCommand.TenantOption();
        var c = new Command("groups", "List a tenant's groups") { tenant };
        AdminCommand.SetHandler(c, tenant, async (ctx, api, t, ct) =>
            AdminCommand.Print(ctx, await api.GetAsync<List<GroupInfo>>($"api/v1/tenants/{t}/groups", ct), g => $"{g.Id}  {g.Name,-20} {g.ClientIds.Count} client(s)"));
        return c;
    }

    private static Command PlanCreate()
    {
        var tenant = AdminCommand.TenantOption();
        var name = new Argument<string>("name") { Description = "The plan's name" };
        var paths = new Option<string[]>("--path") { Description = "An absolute path to back up on the client; repeatable", Required = true };
        var excludes = new Option<string[]>("--exclude") { Description = "A pattern to leave out (as haven backup --exclude); repeatable" };
        var client = new Option<string?>("--client") { Description = "The client it applies to (or --group)" };
        var group = new Option<string?>("--group") { Description = "The group it applies to (or --client)" };
        var schedule = new Option<string?>("--schedule") { Description = "When: five cron fields in UTC ('30 2 * * *'), @daily, @hourly, or @every 6h" };
        var onReady = new Option<bool>("--on-ready") { Description = "Also run when the client says it is ready (arrives on the network), if the last success is older than an hour" };
        var bandwidth = new Option<string?>("--bandwidth") { Description = "At most this many bytes per second of upload, e.g. 2M" };
        var keepLast = new Option<int?>("--keep-last") { Description = "Retention: keep the last N snapshots" };
        var keepDaily = new Option<int?>("--keep-daily") { Description = "Retention: keep one snapshot a day for N days" };
        var keepWeekly = new Option<int?>("--keep-weekly") { Description = "Retention: keep one snapshot a week for N weeks" };
        var keepMonthly = new Option<int?>("--keep-monthly") { Description = "Retention: keep one snapshot a month for N months" };
        var image = new Option<bool>("--image") { Description = "Back up the one --path (a disk, partition or image file) as a disk image, block by block" };
        var blockSize = new Option<string?>("--block-size") { Description = "With --image: the block size, a power of two from 4K to 16M (default 64K)" };
        var c = new Command("plan-create", "Create a backup plan (paths, excludes, schedule, retention, bandwidth) for a client or a group")
        {
            tenant, name, paths, excludes, client, group, schedule, onReady, bandwidth, keepLast, keepDaily, keepWeekly, keepMonthly, image, blockSize,
        };
        AdminCommand.SetHandler(c, tenant, async (ctx, api, t, ct) =>
        {
            var p = ctx.Parse;
            RetentionSpec? retention = p.GetValue(keepLast) is null && p.GetValue(keepDaily) is null && p.GetValue(keepWeekly) is null && p.GetValue(keepMonthly) is null
                ? null
                : new RetentionSpec(p.GetValue(keepLast), null, p.GetValue(keepDaily), p.GetValue(keepWeekly), p.GetValue(keepMonthly));
            var spec = new PlanSpec(
                p.GetValue(name)!, p.GetValue(paths)!, p.GetValue(excludes), p.GetValue(schedule), p.GetValue(onReady), retention,
                p.GetValue(bandwidth) is { } b ? Units.ParseSize(b, "--bandwidth") : null, p.GetValue(client), p.GetValue(group),
                p.GetValue(image) ? PlanKinds.Image : null,
                p.GetValue(blockSize) is { } size ? (int)Math.Min(int.MaxValue, Units.ParseSize(size, "--block-size")) : null);
            var plan = await api.PostAsync<PlanInfo>($"api/v1/tenants/{t}/plans", spec, ct);
            AdminCommand.Print(ctx, [plan], x => $"created plan {x.Spec.Name} ({x.Id}){(x.NextRun is { } n ? $"; next run {n:yyyy-MM-dd HH:mm} UTC" : "")}");
        });
        return c;
    }

    private static Command Plans()
    {
        var tenant = AdminCommand.TenantOption();
        var c = new Command("plans", "List a tenant's plans") { tenant };
        AdminCommand.SetHandler(c, tenant, async (ctx, api, t, ct) =>
            AdminCommand.Print(ctx, await api.GetAsync<List<PlanInfo>>($"api/v1/tenants/{t}/plans", ct),
                x => $"{x.Id}  {x.Spec.Name,-16} {PlanKinds.Of(x.Spec),-6} {(x.Spec.Client is { } cl ? "client " + cl : "group " + x.Spec.Group),-20} {string.Join(",", x.Spec.Paths),-30} {x.Spec.Schedule ?? "-"}{(x.Spec.RunOnReady ? " +ready" : "")}"));
        return c;
    }

    private static Command PlanDelete()
    {
        var tenant = AdminCommand.TenantOption();
        var plan = new Argument<string>("plan") { Description = "Plan name or id" };
        var c = new Command("plan-delete", "Delete a plan (its queued jobs go too; finished jobs stay on record)") { tenant, plan };
        AdminCommand.SetHandler(c, tenant, async (ctx, api, t, ct) =>
        {
            await api.SendAsync<JsonElement?>(HttpMethod.Delete, $"api/v1/tenants/{t}/plans/{Uri.EscapeDataString(ctx.Parse.GetValue(plan)!)}", null, ct);
            ctx.Output.Line($"deleted plan {ctx.Parse.GetValue(plan)}");
        });
        return c;
    }

    private static Command RunNow()
    {
        var tenant = AdminCommand.TenantOption();
        var client = new Argument<string>("client") { Description = "Client name or id" };
        var plan = new Option<string?>("--plan") { Description = "Only this plan (default: all of the client's plans)" };
        var wait = new Option<bool>("--wait") { Description = "Wait until the jobs end; exit 0 when all succeeded, 3 when one was partial, 1 otherwise" };
        var c = new Command("run", "Run a client's plans now") { tenant, client, plan, wait };
        AdminCommand.SetHandler(c, tenant, async (ctx, api, t, ct) =>
        {
            var jobs = await api.PostAsync<List<JobInfo>>($"api/v1/tenants/{t}/clients/{Uri.EscapeDataString(ctx.Parse.GetValue(client)!)}/run", new RunNowRequest(ctx.Parse.GetValue(plan)), ct);
            if (ctx.Parse.GetValue(wait))
            {
                jobs = await WaitAsync(api, t, jobs, ct);
            }

            AdminCommand.Print(ctx, jobs, Describe);
            return ExitCode(jobs, ctx.Parse.GetValue(wait));
        });
        return c;
    }

    private static async Task<List<JobInfo>> WaitAsync(ApiClient api, string tenant, List<JobInfo> jobs, CancellationToken ct)
    {
        while (true)
        {
            var now = new List<JobInfo>();
            foreach (var job in jobs)
            {
                now.Add(await api.GetAsync<JobInfo>($"api/v1/tenants/{tenant}/jobs/{job.Id}", ct));
            }

            if (now.All(j => JobStates.IsFinal(j.State)))
            {
                return now;
            }

            await Task.Delay(TimeSpan.FromSeconds(1), ct);
        }
    }

    private static int ExitCode(IReadOnlyList<JobInfo> jobs, bool waited) =>
        !waited ? 0
        : jobs.All(j => j.State == JobStates.Succeeded) ? ExitCodes.Success
        : jobs.All(j => j.State is JobStates.Succeeded or JobStates.Partial) ? ExitCodes.PartialBackup
        : ExitCodes.Failed;

    private static string Describe(JobInfo j) =>
        $"{j.Id[..12]}  {j.Kind,-7} {j.Trigger,-8} {j.State,-11}{(j.Missed ? " MISSED" : "")} queued {j.Queued:yyyy-MM-dd HH:mm:ss}"
        + (j.SnapshotId is { } s ? $"  snapshot {s[..8]}" : "")
        + (j.Stats is { } st ? $"  {st.BytesProcessed} B processed, {st.BytesAdded} B added, {st.Errors} errors, {st.DurationSeconds:0.0} s" : "")
        + (j.Progress is { } p && !JobStates.IsFinal(j.State) ? $"  {p.FilesDone}/{p.FilesTotal} files" : "")
        + (j.Message is { } m ? $"  {m}" : "");

    private static Command Jobs()
    {
        var tenant = AdminCommand.TenantOption();
        var client = new Option<string?>("--client") { Description = "Only this client's jobs" };
        var limit = new Option<int?>("--limit") { Description = "At most this many, newest first (default 100)" };
        var c = new Command("jobs", "List jobs: state, trigger, snapshot, sizes, errors") { tenant, client, limit };
        AdminCommand.SetHandler(c, tenant, async (ctx, api, t, ct) =>
        {
            string query = $"?limit={ctx.Parse.GetValue(limit) ?? 100}" + (ctx.Parse.GetValue(client) is { } cl ? $"&client={Uri.EscapeDataString(cl)}" : "");
            AdminCommand.Print(ctx, await api.GetAsync<List<JobInfo>>($"api/v1/tenants/{t}/jobs{query}", ct), Describe);
        });
        return c;
    }

    private static Command Job()
    {
        var tenant = AdminCommand.TenantOption();
        var id = new Argument<string>("job") { Description = "Job id" };
        var wait = new Option<bool>("--wait") { Description = "Wait until it ends" };
        var c = new Command("job", "Show one job") { tenant, id, wait };
        AdminCommand.SetHandler(c, tenant, async (ctx, api, t, ct) =>
        {
            List<JobInfo> job = [await api.GetAsync<JobInfo>($"api/v1/tenants/{t}/jobs/{Uri.EscapeDataString(ctx.Parse.GetValue(id)!)}", ct)];
            if (ctx.Parse.GetValue(wait))
            {
                job = await WaitAsync(api, t, job, ct);
            }

            AdminCommand.Print(ctx, job, Describe);
            return ExitCode(job, ctx.Parse.GetValue(wait));
        });
        return c;
    }

    private static Command Restore()
    {
        var tenant = AdminCommand.TenantOption();
        var snapshot = new Argument<string>("snapshot") { Description = "Snapshot id (or a unique prefix), or latest" };
        var client = new Option<string>("--client") { Description = "The client to restore onto (any enrolled client of the tenant)", Required = true };
        var target = new Option<string>("--target") { Description = "Absolute folder on that client to restore into (for an image snapshot: a disk or image file)", Required = true };
        var grow = new Option<bool>("--grow") { Description = "Image snapshots: on a larger disk, grow the last partition and its ext2/3/4 filesystem to the end" };
        var paths = new Option<string[]>("--path") { Description = "Restore only what matches this pattern (as restore --include); repeatable" };
        var wait = new Option<bool>("--wait") { Description = "Wait until the restore ends" };
        var c = new Command("restore", "Restore a snapshot onto a client of the tenant (the same one or another)") { tenant, snapshot, client, target, paths, grow, wait };
        AdminCommand.SetHandler(c, tenant, async (ctx, api, t, ct) =>
        {
            var p = ctx.Parse;
            List<JobInfo> job = [await api.PostAsync<JobInfo>($"api/v1/tenants/{t}/restores", new RestoreRequest(p.GetValue(snapshot)!, p.GetValue(client)!, p.GetValue(target)!, p.GetValue(paths), p.GetValue(grow)), ct)];
            if (p.GetValue(wait))
            {
                job = await WaitAsync(api, t, job, ct);
            }

            AdminCommand.Print(ctx, job, Describe);
            return ExitCode(job, p.GetValue(wait));
        });
        return c;
    }

    private static Command NotifyAdd()
    {
        var tenant = AdminCommand.TenantOption();
        var webhook = new Option<string?>("--webhook") { Description = "An http(s) URL that gets a JSON POST when a job ends" };
        var email = new Option<string?>("--email") { Description = "An address that gets a mail when a job ends (the server needs --smtp)" };
        var c = new Command("notify-add", "Confirm the end of every job of the tenant by webhook or email") { tenant, webhook, email };
        AdminCommand.SetHandler(c, tenant, async (ctx, api, t, ct) =>
        {
            var request = ctx.Parse.GetValue(webhook) is { } url ? new CreateNotificationTarget("webhook", url)
                : ctx.Parse.GetValue(email) is { } address ? new CreateNotificationTarget("email", address)
                : throw new HavenException(ErrorCode.Usage, "give --webhook URL or --email ADDRESS");
            var target = await api.PostAsync<NotificationTarget>($"api/v1/tenants/{t}/notifications", request, ct);
            AdminCommand.Print(ctx, [target], x => $"added {x.Kind} {x.Address} ({x.Id})");
        });
        return c;
    }

    private static Command Notifications()
    {
        var tenant = AdminCommand.TenantOption();
        var c = new Command("notifications", "List where job messages go") { tenant };
        AdminCommand.SetHandler(c, tenant, async (ctx, api, t, ct) =>
            AdminCommand.Print(ctx, await api.GetAsync<List<NotificationTarget>>($"api/v1/tenants/{t}/notifications", ct), x => $"{x.Id}  {x.Kind,-8} {x.Address}"));
        return c;
    }
}
