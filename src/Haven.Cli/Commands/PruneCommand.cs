using System.CommandLine;
using System.Globalization;
using System.Text.Json.Nodes;
using Haven.Cli.Infrastructure;
using Haven.Core;
using Haven.Repository;
using Haven.Repository.Maintenance;

namespace Haven.Cli.Commands;

/// <summary>The options that tune prune, shared by <c>prune</c> and <c>forget --prune</c>.</summary>
public sealed class PruneOptionSet
{
    public readonly Option<string> MaxUnused = new("--max-unused")
    {
        Description = "Unused space to tolerate in kept packs: a share of the repository (5%), a size (2G) or 'unlimited'; more is reclaimed by repacking",
        DefaultValueFactory = _ => "5%",
    };

    public readonly Option<string?> MaxRepackSize = new("--max-repack-size") { Description = "Repack (read and write again) at most this much in one run, e.g. 1G" };

    public readonly Option<bool> RepackSmall = new("--repack-small") { Description = "Also merge packs smaller than a quarter of the pack size" };

    public void AddTo(Command c)
    {
        c.Options.Add(MaxUnused);
        c.Options.Add(MaxRepackSize);
        c.Options.Add(RepackSmall);
    }

    public PruneOptions Get(ParseResult p, bool dryRun) => new()
    {
        MaxUnused = ParseMaxUnused(p.GetValue(MaxUnused) ?? "5%"),
        MaxRepackSize = p.GetValue(MaxRepackSize) is { } s ? Units.ParseSize(s, "--max-repack-size") : null,
        RepackSmall = p.GetValue(RepackSmall),
        DryRun = dryRun,
    };

    /// <summary>"5%", "0%", "2G", "unlimited".</summary>
    public static UnusedLimit ParseMaxUnused(string text)
    {
        var s = text.Trim();
        if (s.Equals("unlimited", StringComparison.OrdinalIgnoreCase))
        {
            return UnusedLimit.Unlimited;
        }

        if (s.EndsWith('%'))
        {
            if (double.TryParse(s[..^1], NumberStyles.Float, CultureInfo.InvariantCulture, out double percent) && percent >= 0 && percent <= 100)
            {
                return UnusedLimit.FromPercent(percent);
            }

            throw new HavenException(ErrorCode.Usage, $"--max-unused: '{text}' is not a percentage between 0% and 100%");
        }

        return UnusedLimit.FromBytes(Units.ParseSize(s, "--max-unused"));
    }
}

public static class PruneCommand
{
    public static Command Build()
    {
        var options = new PruneOptionSet();
        var dryRun = new Option<bool>("--dry-run", "-n") { Description = "Show what would be removed and repacked; change nothing" };
        var command = new Command("prune", "Remove data that no snapshot needs any more") { dryRun };
        options.AddTo(command);
        command.Description += """


            Reads the index and the trees of every snapshot, then deletes packs that hold nothing any snapshot needs,
            packs left behind by interrupted backups, and copies the still-needed data out of mostly-empty packs
            ("repacking") until at most --max-unused of the space is unused. Holds an exclusive lock: no backup can
            run meanwhile. Interrupting it is safe at any moment; run it again to finish.
            A damaged snapshot, tree or index file stops prune before it deletes anything: run 'haven check' first.
            Exit codes: 0 done (or nothing to do); 2 usage error; 11 the repository is locked (a backup, restore or
            check is running; --retry-lock waits); 14 the repository is damaged and nothing was deleted.

            Examples:
              haven prune
              haven prune --dry-run
              haven prune --max-unused 0% --repack-small           (reclaim every byte, merge small packs)
              haven prune --max-unused unlimited                   (only delete whole packs; never repack)
              haven prune --max-repack-size 2G                     (bound the work of one run)
              haven forget --keep-daily 7 --prune                  (forget snapshots and prune in one go)
            """;
        Runner.SetHandler(command, async (ctx, ct) =>
        {
            bool dry = ctx.Parse.GetValue(dryRun);
            var pruneOptions = options.Get(ctx.Parse, dry);
            await using var repo = await ctx.OpenRepositoryAsync(loadIndex: false, ct);
            // A dry run deletes nothing, so it need not stop backups.
            await using var repoLock = await ctx.LockAsync(repo, exclusive: !dry, "prune", ct);
            var result = await RunAsync(ctx, repo, repoLock, pruneOptions, ct);
            ctx.Output.JsonResult(ToJson(result));
            return ExitCodes.Success;
        });
        return command;
    }

    /// <summary>Runs a prune with a progress line and prints its plan and outcome (text mode).</summary>
    internal static async Task<PruneResult> RunAsync(CliContext ctx, Haven.Repository.Repository repo, RepositoryLock held, PruneOptions options, CancellationToken ct)
    {
        var gate = new Lock();
        var latest = new PruneProgress(PrunePhase.LoadingIndex, 0, 0);
        var pruner = new Pruner(repo, options)
        {
            OnProgress = p =>
            {
                lock (gate)
                {
                    latest = p;
                }
            },
        };
        var result = await ctx.Output.WithProgressAsync(pruner.RunAsync(held, ct), () =>
        {
            lock (gate)
            {
                return Render(latest);
            }
        });
        PrintPlan(ctx.Output, result.Plan);
        var o = ctx.Output;
        if (result.DryRun)
        {
            o.Line("dry run: nothing was changed");
        }
        else if (result.Plan.NothingToDo)
        {
            o.Line("nothing to prune");
        }
        else
        {
            o.Line($"deleted {Units.Count(result.PacksDeleted)} pack(s)"
                + (result.PacksRepacked > 0 ? $", {Units.Count(result.PacksRepacked)} of them after repacking into {Units.Count(result.PacksWritten)} new" : "")
                + (result.IndexFilesDeleted > 0 ? $"; replaced {Units.Count(result.IndexFilesDeleted)} index file(s) by {Units.Count(result.IndexFilesWritten)}" : ""));
            o.Line($"freed {Units.Bytes(result.BytesFreed)}; {Units.Bytes(result.BytesStillUnused)} unused remain");
        }

        return result;
    }

    private static string Render(PruneProgress p) => p.Phase switch
    {
        PrunePhase.LoadingIndex => $"loading index files {Units.Count(p.Done)}/{Units.Count(p.Total)}",
        PrunePhase.Marking => $"finding data in use: {Units.Count(p.Done)} trees read",
        PrunePhase.Planning => "planning",
        PrunePhase.Repacking => $"repacking {Output.Bar(p.Total == 0 ? 0 : (double)p.Done / p.Total)} {Units.Count(p.Done)}/{Units.Count(p.Total)} packs",
        PrunePhase.WritingIndex => $"writing index {Units.Count(p.Done)}/{Units.Count(p.Total)}",
        PrunePhase.DeletingIndexFiles => $"deleting old index files {Units.Count(p.Done)}/{Units.Count(p.Total)}",
        PrunePhase.DeletingPacks => $"deleting packs {Output.Bar(p.Total == 0 ? 0 : (double)p.Done / p.Total)} {Units.Count(p.Done)}/{Units.Count(p.Total)}",
        _ => "done",
    };

    private static void PrintPlan(Output o, PrunePlan plan)
    {
        long after = plan.UsedBytes + plan.UnusedAfter;
        o.Line($"snapshots:     {Units.Count(plan.Snapshots)}");
        o.Line($"packs:         {Units.Count(plan.PacksTotal)} ({Units.Bytes(plan.BytesTotal)})");
        o.Line($"used:          {Units.Count(plan.UsedBlobs)} blobs, {Units.Bytes(plan.UsedBytes)}");
        o.Line($"unused:        {Units.Count(plan.UnusedBlobs)} blobs, {Units.Bytes(plan.UnusedBytes)}"
            + (plan.DuplicateBlobs > 0 ? $" (including {Units.Count(plan.DuplicateBlobs)} duplicate copies)" : ""));
        o.Line($"to delete:     {Units.Count(plan.PacksToDelete)} unused pack(s), {Units.Bytes(plan.BytesToDelete)}"
            + $"; {Units.Count(plan.UnindexedPacks)} unindexed pack(s), {Units.Bytes(plan.UnindexedBytes)}");
        o.Line($"to repack:     {Units.Count(plan.PacksToRepack)} pack(s), {Units.Bytes(plan.BytesToRepack)}, writing {Units.Bytes(plan.RepackUsedBytes)} again");
        o.Line($"to keep:       {Units.Count(plan.PacksToKeep)} pack(s)");
        o.Line($"unused after:  {Units.Bytes(plan.UnusedAfter)}"
            + (after > 0 ? string.Create(CultureInfo.InvariantCulture, $" ({100.0 * plan.UnusedAfter / after:0.##}% of {Units.Bytes(after)})") : ""));
    }

    internal static JsonObject ToJson(PruneResult r) => new()
    {
        ["dry_run"] = r.DryRun,
        ["plan"] = new JsonObject
        {
            ["snapshots"] = r.Plan.Snapshots,
            ["packs_total"] = r.Plan.PacksTotal,
            ["bytes_total"] = r.Plan.BytesTotal,
            ["used_blobs"] = r.Plan.UsedBlobs,
            ["used_bytes"] = r.Plan.UsedBytes,
            ["unused_blobs"] = r.Plan.UnusedBlobs,
            ["unused_bytes"] = r.Plan.UnusedBytes,
            ["duplicate_blobs"] = r.Plan.DuplicateBlobs,
            ["packs_to_delete"] = r.Plan.PacksToDelete,
            ["bytes_to_delete"] = r.Plan.BytesToDelete,
            ["unindexed_packs"] = r.Plan.UnindexedPacks,
            ["unindexed_bytes"] = r.Plan.UnindexedBytes,
            ["packs_to_repack"] = r.Plan.PacksToRepack,
            ["bytes_to_repack"] = r.Plan.BytesToRepack,
            ["repack_used_bytes"] = r.Plan.RepackUsedBytes,
            ["packs_to_keep"] = r.Plan.PacksToKeep,
            ["unused_after"] = r.Plan.UnusedAfter,
            ["blobs_to_remove"] = r.Plan.BlobsToRemove,
            ["index_files_to_replace"] = r.Plan.IndexFilesToReplace,
        },
        ["packs_deleted"] = r.PacksDeleted,
        ["packs_repacked"] = r.PacksRepacked,
        ["packs_written"] = r.PacksWritten,
        ["bytes_freed"] = r.BytesFreed,
        ["blobs_removed"] = r.BlobsRemoved,
        ["bytes_still_unused"] = r.BytesStillUnused,
        ["index_files_written"] = r.IndexFilesWritten,
        ["index_files_deleted"] = r.IndexFilesDeleted,
    };
}
