using System.CommandLine;
using System.Globalization;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Haven.Cli.Infrastructure;
using Haven.Core;
using Haven.Repository.Maintenance;
using Haven.Repository.Model;
using Haven.Storage;

namespace Haven.Cli.Commands;

public static partial class ForgetCommand
{
    public static Command Build()
    {
        var ids = new Argument<string[]>("snapshot-ids") { Description = "Remove exactly these snapshots (ids, unique id prefixes or 'latest'); no policy applies", Arity = ArgumentArity.ZeroOrMore };
        Runner.RejectOptionLikeValues(ids);
        Option<string?> Count(string name, string alias, string what) => new($"--keep-{name}", alias) { Description = $"Keep the newest snapshot of each of the last N {what} (N, or 'unlimited')" };
        Option<string?> Within(string name, string what) => new($"--keep-within{name}") { Description = what };
        var last = new Option<string?>("--keep-last", "-l") { Description = "Keep the N newest snapshots" };
        var hourly = Count("hourly", "-H", "hours");
        var daily = Count("daily", "-d", "days");
        var weekly = Count("weekly", "-w", "ISO weeks");
        var monthly = Count("monthly", "-m", "months");
        var yearly = Count("yearly", "-y", "years");
        var within = Within("", "Keep every snapshot taken less than DURATION before the group's newest (e.g. 30d, 36h, 2w, 1y)");
        var withinHourly = Within("-hourly", "Keep one snapshot per hour within DURATION of the group's newest");
        var withinDaily = Within("-daily", "Keep one snapshot per day within DURATION of the group's newest");
        var withinWeekly = Within("-weekly", "Keep one snapshot per ISO week within DURATION of the group's newest");
        var withinMonthly = Within("-monthly", "Keep one snapshot per month within DURATION of the group's newest");
        var withinYearly = Within("-yearly", "Keep one snapshot per year within DURATION of the group's newest");
        var keepTag = new Option<string[]>("--keep-tag") { Description = "Keep snapshots with this tag (repeatable, or comma-separated)" };
        var groupBy = new Option<string>("--group-by", "-g") { Description = "Apply the policy per group of snapshots with the same host, paths and/or tags: any of host,paths,tags, or '' for one group", DefaultValueFactory = _ => "host,paths" };
        var dryRun = new Option<bool>("--dry-run", "-n") { Description = "Show what would be removed; change nothing" };
        var prune = new Option<bool>("--prune") { Description = "Run 'prune' afterwards to delete the data only the removed snapshots used" };
        var filter = new SnapshotFilterOptions();
        var pruneOptions = new PruneOptionSet();
        var command = new Command("forget", "Remove snapshots by a retention policy or by id")
        {
            ids, last, hourly, daily, weekly, monthly, yearly, within, withinHourly, withinDaily, withinWeekly, withinMonthly, withinYearly,
            keepTag, groupBy, dryRun, prune,
        };
        filter.AddTo(command);
        pruneOptions.AddTo(command);
        command.Description += """


            Snapshots are grouped (by default by host and paths) and the policy applies to each group on its own;
            --host, --tag and --path select which snapshots are considered at all. Periods (hour, day, ISO week,
            month, year) are calendar periods in the local time zone; each --keep-* rule keeps the newest snapshot
            of each of its N newest periods, and when there are fewer periods than N it also keeps the oldest
            snapshot. --keep-within counts back from the newest snapshot of the group, not from now. Every kept
            snapshot is listed with the rules that keep it. Without any --keep-* option and without ids nothing is
            removed. A policy that would remove every snapshot of a group is refused; name snapshots by id for that.
            Only the snapshot files are removed: the data they alone used stays until 'haven prune' (or --prune).
            Durations: h, d, w (7 days), y (365 days), combined like 1y6w; months are not accepted (write 30d or 4w).
            Takes an exclusive lock (a shared one with --dry-run). With --prune, the prune options below apply.
            Exit codes: 0 done; 2 usage error, also a policy that would remove a whole group; 11 the repository is
            locked; 14 the repository is damaged (with --prune: prune stopped before deleting anything).

            Examples:
              haven forget --keep-daily 7 --keep-weekly 5 --keep-monthly 12 --dry-run
              haven forget --keep-last 10 --keep-within 30d --keep-tag important --prune
              haven forget --host laptop --tag nightly --keep-daily 14 --group-by host
              haven forget 4f2a91c0 9bd1e37a
            """;
        Runner.SetHandler(command, async (ctx, ct) =>
        {
            var p = ctx.Parse;
            var policy = new RetentionPolicy
            {
                Last = ParseCount(p.GetValue(last), "--keep-last"),
                Hourly = ParseCount(p.GetValue(hourly), "--keep-hourly"),
                Daily = ParseCount(p.GetValue(daily), "--keep-daily"),
                Weekly = ParseCount(p.GetValue(weekly), "--keep-weekly"),
                Monthly = ParseCount(p.GetValue(monthly), "--keep-monthly"),
                Yearly = ParseCount(p.GetValue(yearly), "--keep-yearly"),
                Within = ParseWithin(p.GetValue(within), "--keep-within"),
                WithinHourly = ParseWithin(p.GetValue(withinHourly), "--keep-within-hourly"),
                WithinDaily = ParseWithin(p.GetValue(withinDaily), "--keep-within-daily"),
                WithinWeekly = ParseWithin(p.GetValue(withinWeekly), "--keep-within-weekly"),
                WithinMonthly = ParseWithin(p.GetValue(withinMonthly), "--keep-within-monthly"),
                WithinYearly = ParseWithin(p.GetValue(withinYearly), "--keep-within-yearly"),
                Tags = (p.GetValue(keepTag) ?? []).SelectMany(t => t.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)).Distinct().ToList(),
                TimeZone = TimeZoneInfo.Local,
            };
            policy.Validate();
            var grouping = ParseGrouping(p.GetValue(groupBy) ?? "host,paths");
            var references = p.GetValue(ids) ?? [];
            bool dry = p.GetValue(dryRun);
            bool andPrune = p.GetValue(prune);
            var pruneSettings = andPrune ? pruneOptions.Get(p, dry) : null; // parse errors before touching the repository
            if (references.Length > 0 && !policy.IsEmpty)
            {
                throw new HavenException(ErrorCode.Usage, "give snapshot ids or --keep-* options, not both");
            }

            await using var repo = await ctx.OpenRepositoryAsync(loadIndex: false, ct);
            // Removing snapshots is a deletion: exclusive, so that no backup picks a removed snapshot as its parent
            // and no restore reads one. A dry run deletes nothing and only needs to keep deleters out.
            await using var repoLock = await ctx.LockAsync(repo, exclusive: !dry, andPrune ? "forget --prune" : "forget", ct);
            var all = await repo.LoadSnapshotsAsync(ct, (id, e) => Output.Warn($"snapshots/{id}: {e.Message} (not considered)"));
            var f = filter.Get(p);
            var selected = all.Where(s => f.Matches(s.Snapshot)).ToList();

            IReadOnlyList<RetentionGroup> groups;
            if (references.Length > 0)
            {
                var doomed = Resolve(references, all, selected);
                groups = [new RetentionGroup(new SnapshotGroupKey(null, null, null), [], doomed)];
            }
            else if (policy.IsEmpty)
            {
                ctx.Output.Info("no --keep-* option and no snapshot ids given: no snapshot is removed");
                groups = [];
            }
            else
            {
                groups = RetentionPolicy.Apply(selected, policy, grouping);
            }

            var removed = groups.SelectMany(g => g.Remove).ToList();
            Print(ctx.Output, groups, references.Length > 0);
            if (!dry)
            {
                repoLock.EnsureValid(); // a lock that expired while this process slept protects nothing
                int done = 0;
                foreach (var (id, _) in removed)
                {
                    await repo.Store.DeleteAsync(new StoreHandle(FileKind.Snapshot, id.ToString()), ct);
                    done++;
                }

                ctx.Output.Line(removed.Count == 0 ? "no snapshot removed" : $"removed {Units.Count(done)} snapshot(s)");
            }
            else
            {
                ctx.Output.Line($"dry run: {Units.Count(removed.Count)} snapshot(s) would be removed");
            }

            JsonObject? pruneJson = null;
            if (pruneSettings is not null)
            {
                ctx.Output.Line();
                ctx.Output.Line(dry ? "prune (dry run, as if the snapshots were removed):" : "prune:");
                var pruned = await PruneCommand.RunAsync(ctx, repo, repoLock, pruneSettings with { IgnoreSnapshots = removed.Select(r => r.Id).ToHashSet() }, ct);
                pruneJson = PruneCommand.ToJson(pruned);
            }

            ctx.Output.JsonResult(new JsonObject
            {
                ["dry_run"] = dry,
                ["policy"] = policy.Describe(),
                ["groups"] = new JsonArray(groups.Select(g => (JsonNode)GroupJson(g)).ToArray()),
                ["removed"] = removed.Count,
                ["prune"] = pruneJson,
            });
            return ExitCodes.Success;
        });
        return command;
    }

    /// <summary>A count or "unlimited" (also restic's -1); absent is 0.</summary>
    internal static int ParseCount(string? text, string option)
    {
        if (text is null)
        {
            return 0;
        }

        if (text.Equals("unlimited", StringComparison.OrdinalIgnoreCase) || text.Equals("all", StringComparison.OrdinalIgnoreCase))
        {
            return RetentionPolicy.Unlimited;
        }

        if (int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out int n) && n >= RetentionPolicy.Unlimited)
        {
            return n;
        }

        throw new HavenException(ErrorCode.Usage, $"{option}: '{text}' is not a count (a number >= 0, or 'unlimited')");
    }

    [GeneratedRegex(@"^(\d+[hdwy])+$")]
    private static partial Regex WithinPattern();

    /// <summary>
    /// Durations for --keep-within*: hours, days, weeks and (365-day) years. Minutes and seconds make no sense for
    /// retention, and refusing 'm' protects restic users, for whom '6m' is six months, from keeping six minutes.
    /// </summary>
    internal static TimeSpan? ParseWithin(string? text, string option)
    {
        if (text is null)
        {
            return null;
        }

        var s = text.Trim();
        if (!WithinPattern().IsMatch(s))
        {
            throw new HavenException(ErrorCode.Usage, $"{option}: '{text}' is not a duration of hours, days, weeks or years (examples: 36h, 30d, 2w, 1y6w)",
                s.Contains('m', StringComparison.Ordinal) ? "months vary in length: write days or weeks instead (30d, 4w)" : null);
        }

        var span = Units.ParseDuration(s, option);
        return span > TimeSpan.Zero ? span : throw new HavenException(ErrorCode.Usage, $"{option} must be longer than zero");
    }

    internal static SnapshotGrouping ParseGrouping(string text)
    {
        var grouping = SnapshotGrouping.None;
        foreach (var part in text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            grouping |= part.ToLowerInvariant() switch
            {
                "host" => SnapshotGrouping.Host,
                "paths" or "path" => SnapshotGrouping.Paths,
                "tags" or "tag" => SnapshotGrouping.Tags,
                "none" => SnapshotGrouping.None,
                _ => throw new HavenException(ErrorCode.Usage, $"--group-by: '{part}' is not host, paths or tags", "combine them with commas (host,paths), or pass '' for a single group"),
            };
        }

        return grouping;
    }

    /// <summary>Finds each named snapshot among all (ids and prefixes) or the selected ones ('latest').</summary>
    private static List<(ObjectId Id, Snapshot Snapshot)> Resolve(string[] references, List<(ObjectId Id, Snapshot Snapshot)> all, List<(ObjectId Id, Snapshot Snapshot)> selected)
    {
        var result = new List<(ObjectId, Snapshot)>();
        var seen = new HashSet<ObjectId>();
        foreach (var reference in references)
        {
            (ObjectId Id, Snapshot Snapshot) found;
            if (reference == "latest")
            {
                found = selected.Count > 0 ? selected[^1] : throw new HavenException(ErrorCode.NotFound, "there is no snapshot for 'latest' (with the given --host, --tag and --path)");
            }
            else if (reference.Length < 4 || !reference.All(Uri.IsHexDigit))
            {
                throw new HavenException(ErrorCode.Usage, $"'{reference}' is neither 'latest' nor a snapshot id (at least 4 hex digits)");
            }
            else
            {
                var matches = all.Where(s => s.Id.ToString().StartsWith(reference, StringComparison.OrdinalIgnoreCase)).ToList();
                found = matches.Count switch
                {
                    0 => throw new HavenException(ErrorCode.NotFound, $"no snapshot with id {reference}", "list them with 'haven snapshots'; nothing was removed"),
                    1 => matches[0],
                    _ => throw new HavenException(ErrorCode.Usage, $"snapshot id prefix {reference} is ambiguous ({matches.Count} snapshots match)", "give more digits; nothing was removed"),
                };
            }

            if (seen.Add(found.Id))
            {
                result.Add(found);
            }
        }

        return result.OrderBy(s => s.Item2.Time).ThenBy(s => s.Item1).ToList();
    }

    private static void Print(Output o, IReadOnlyList<RetentionGroup> groups, bool explicitIds)
    {
        foreach (var g in groups)
        {
            if (!explicitIds)
            {
                o.Line($"snapshots of {g.Key.Describe()}:");
                o.Line($"keep {g.Keep.Count} snapshot(s):");
                Table(o, g.Keep.Select(k => (k.Id, k.Snapshot, (IReadOnlyList<string>?)k.Reasons)));
            }

            if (g.Remove.Count > 0)
            {
                o.Line($"remove {g.Remove.Count} snapshot(s):");
                Table(o, g.Remove.Select(r => (r.Id, r.Snapshot, (IReadOnlyList<string>?)null)));
            }

            o.Line();
        }
    }

    private static void Table(Output o, IEnumerable<(ObjectId Id, Snapshot Snapshot, IReadOnlyList<string>? Reasons)> rows)
    {
        var list = rows.ToList();
        o.Line($"  {"ID",-9} {"Time",-19} {"Host",-16} {"Tags",-16} {"Paths",-24} {(list.Any(r => r.Reasons is not null) ? "Reasons" : "")}".TrimEnd());
        foreach (var (id, s, reasons) in list)
        {
            o.Line($"  {id.Short,-9} {s.Time.ToLocalTime():yyyy-MM-dd HH:mm:ss} {Trim(s.Hostname, 16),-16} {Trim(string.Join(",", s.Tags), 16),-16} {Trim(string.Join(" ", s.Paths), 24),-24} {(reasons is null ? "" : string.Join(", ", reasons))}".TrimEnd());
        }
    }

    private static string Trim(string s, int n) => s.Length <= n ? s : s[..(n - 1)] + "…";

    private static JsonObject SnapshotJson(ObjectId id, Snapshot s, IReadOnlyList<string>? reasons)
    {
        var node = new JsonObject
        {
            ["id"] = id.ToString(),
            ["short_id"] = id.Short,
            ["time"] = s.Time.ToString("O", CultureInfo.InvariantCulture),
            ["hostname"] = s.Hostname,
            ["paths"] = new JsonArray(s.Paths.Select(x => (JsonNode?)x).ToArray()),
            ["tags"] = new JsonArray(s.Tags.Select(x => (JsonNode?)x).ToArray()),
        };
        if (reasons is not null)
        {
            node["reasons"] = new JsonArray(reasons.Select(x => (JsonNode?)x).ToArray());
        }

        return node;
    }

    private static JsonObject GroupJson(RetentionGroup g) => new()
    {
        ["host"] = g.Key.Host,
        ["paths"] = g.Key.Paths is null ? null : new JsonArray(g.Key.Paths.Select(x => (JsonNode?)x).ToArray()),
        ["tags"] = g.Key.Tags is null ? null : new JsonArray(g.Key.Tags.Select(x => (JsonNode?)x).ToArray()),
        ["keep"] = new JsonArray(g.Keep.Select(k => (JsonNode)SnapshotJson(k.Id, k.Snapshot, k.Reasons)).ToArray()),
        ["remove"] = new JsonArray(g.Remove.Select(r => (JsonNode)SnapshotJson(r.Id, r.Snapshot, null)).ToArray()),
    };
}
