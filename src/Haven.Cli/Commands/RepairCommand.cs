using System.CommandLine;
using System.Text.Json.Nodes;
using Haven.Cli.Infrastructure;
using Haven.Core;
using Haven.Repository.Maintenance;

namespace Haven.Cli.Commands;

public static class RepairCommand
{
    public static Command Build()
    {
        var command = new Command("repair", "Repair a damaged repository: rebuild the index, salvage snapshots") { BuildIndex(), BuildSnapshots() };
        command.Description += """


            repair index reads the header of every pack and writes a new index that names exactly the packs in the
            repository: packs left unindexed by an interrupted backup are indexed, entries of packs that no longer exist
            are dropped, and damaged or unreadable index files are replaced. A pack whose header cannot be read keeps
            the entries the old index had for it and is reported. The old index files are deleted once the new ones
            are stored.

            repair snapshots walks each snapshot (or the ones named). A folder whose tree is missing or damaged becomes
            an empty folder; a file whose data is not in the index is left out (each one is named; run 'repair index'
            first). A repaired snapshot is saved as a new snapshot with the same time, host and paths, the tag
            'repaired' and the original's id in 'original'; with --forget the original is deleted, and so are snapshot
            files that do not open. Undamaged snapshots are left alone.

            Both lock the repository exclusively. Exit codes: 0 done (also when something was repaired or a damaged
            pack was reported); 11 locked; 17 no such snapshot.

            After data was lost (a deleted or damaged pack), run in this order:
              haven check                      (names what is damaged)
              haven repair index               (index what is really there)
              haven repair snapshots --forget  (make every snapshot restorable again)
              haven check

            Examples:
              haven repair index --json
              haven repair snapshots --dry-run
              haven repair snapshots 1a2b3c4d 5e6f7a8b --forget
            """;
        return command;
    }

    private static Command BuildIndex()
    {
        var command = new Command("index", "Rebuild the index from the pack headers (example: haven repair index; see 'haven repair --help')");
        Runner.SetHandler(command, async (ctx, ct) =>
        {
            await using var repo = await ctx.OpenRepositoryAsync(loadIndex: false, ct, useCache: false);
            await using var repoLock = await ctx.LockAsync(repo, exclusive: true, "repair index", ct);
            var repairer = new IndexRepairer(repo) { OnPhase = phase => ctx.Output.Info(phase) };
            var result = await ctx.Output.WithProgressAsync(repairer.RunAsync(ct), () =>
            {
                var (done, total) = repairer.Progress;
                return total == 0 ? "" : $"{Output.Bar((double)done / total)} {Units.Count(done)}/{Units.Count(total)} pack headers";
            });
            foreach (var p in result.Problems)
            {
                Output.Warn($"{p.Object}: {p.Message}");
            }

            ctx.Output.Line($"read {Units.Count(result.PacksRead)} pack header(s), {Units.Count(result.PacksDamaged)} damaged");
            ctx.Output.Line($"indexed {Units.Count(result.BlobsIndexed)} blob(s) in {result.IndexFilesWritten} new index file(s), "
                + $"replacing {result.IndexFilesRemoved} old one(s)");
            if (result.OrphanPacksIndexed > 0)
            {
                ctx.Output.Line($"{Units.Count(result.OrphanPacksIndexed)} pack(s) no index named are indexed now");
            }

            if (result.MissingPacksDropped > 0)
            {
                ctx.Output.Line($"{Units.Count(result.MissingPacksDropped)} pack(s) the old index named are missing; snapshots that need them can be salvaged with 'haven repair snapshots'");
            }

            ctx.Output.JsonResult(new JsonObject
            {
                ["packs_read"] = result.PacksRead,
                ["packs_damaged"] = result.PacksDamaged,
                ["blobs_indexed"] = result.BlobsIndexed,
                ["orphan_packs_indexed"] = result.OrphanPacksIndexed,
                ["missing_packs_dropped"] = result.MissingPacksDropped,
                ["index_files_written"] = result.IndexFilesWritten,
                ["index_files_removed"] = result.IndexFilesRemoved,
                ["problems"] = new JsonArray(result.Problems.Select(p => (JsonNode)new JsonObject { ["object"] = p.Object, ["message"] = p.Message }).ToArray()),
            });
            return ExitCodes.Success;
        });
        return command;
    }

    private static Command BuildSnapshots()
    {
        var ids = new Argument<string[]>("snapshot") { Description = "Snapshot ids or unique prefixes (default: all snapshots)", Arity = ArgumentArity.ZeroOrMore };
        var forget = new Option<bool>("--forget") { Description = "Delete each damaged snapshot once its repaired version is saved, and snapshot files that do not open" };
        var dryRun = new Option<bool>("--dry-run", "-n") { Description = "Only report what would change" };
        var command = new Command("snapshots", "Make damaged snapshots restorable, keeping what is left (example: haven repair snapshots --forget)") { ids, forget, dryRun };
        Runner.SetHandler(command, async (ctx, ct) =>
        {
            var p = ctx.Parse;
            bool isDryRun = p.GetValue(dryRun);
            await using var repo = await ctx.OpenRepositoryAsync(loadIndex: false, ct, useCache: false);
            await using var repoLock = await ctx.LockAsync(repo, exclusive: true, "repair snapshots", ct);
            await repo.LoadIndexAsync(ct, (id, e) => Output.Warn($"index/{id}: {e.Message} (run 'haven repair index' first)"));
            var refs = p.GetValue(ids) ?? [];
            IReadOnlyCollection<ObjectId>? selected = null;
            if (refs.Length > 0)
            {
                var all = await repo.ListAsync(Haven.Storage.FileKind.Snapshot, ct);
                var resolved = new List<ObjectId>();
                foreach (var r in refs)
                {
                    resolved.Add(r == "latest" ? (await repo.FindSnapshotAsync(r, null, ct)).Id : Haven.Repository.Repository.ResolveSnapshotId(r, all, repo.Location));
                }

                selected = resolved.Distinct().ToList();
            }

            var repairer = new SnapshotRepairer(repo, new SnapshotRepairOptions { Snapshots = selected, Forget = p.GetValue(forget), DryRun = isDryRun })
            {
                OnRepaired = r =>
                {
                    ctx.Output.Line($"snapshot {r.Original.Short}: {r.Changes.Count} change(s)");
                    foreach (var c in r.Changes)
                    {
                        string what = c.Kind == SnapshotRepairKind.FileRemoved ? "file removed" : "directory emptied";
                        ctx.Output.Line($"  {what}: {c.Path} ({c.Reason})");
                    }

                    if (r.Repaired is { } newId)
                    {
                        ctx.Output.Line($"  saved as {newId.Short}" + (r.OriginalRemoved ? $", {r.Original.Short} removed" : ""));
                    }
                },
            };
            var result = await repairer.RunAsync(ct);
            foreach (var d in result.Damaged)
            {
                Output.Warn($"snapshots/{d.Id}: {d.Message}" + (d.Removed ? " (removed)" : ""));
            }

            ctx.Output.Line($"{result.SnapshotsChecked} snapshot(s) checked: {result.Repaired.Count} need repair, {result.SnapshotsUnchanged} intact"
                + (result.Damaged.Count > 0 ? $", {result.Damaged.Count} snapshot file(s) damaged" : ""));
            if (isDryRun && (result.Repaired.Count > 0 || result.Damaged.Count > 0))
            {
                ctx.Output.Line("dry run: nothing was changed");
            }
            else if (!p.GetValue(forget) && result.Repaired.Count > 0)
            {
                ctx.Output.Line("the damaged originals are kept; remove them with --forget or 'haven forget'");
            }

            ctx.Output.JsonResult(new JsonObject
            {
                ["dry_run"] = isDryRun,
                ["checked"] = result.SnapshotsChecked,
                ["unchanged"] = result.SnapshotsUnchanged,
                ["trees_written"] = result.TreesWritten,
                ["repaired"] = new JsonArray(result.Repaired.Select(r => (JsonNode)new JsonObject
                {
                    ["original"] = r.Original.ToString(),
                    ["repaired"] = r.Repaired?.ToString(),
                    ["original_removed"] = r.OriginalRemoved,
                    ["changes"] = new JsonArray(r.Changes.Select(c => (JsonNode)new JsonObject
                    {
                        ["path"] = c.Path,
                        ["change"] = c.Kind == SnapshotRepairKind.FileRemoved ? "file_removed" : "directory_emptied",
                        ["reason"] = c.Reason,
                    }).ToArray()),
                }).ToArray()),
                ["damaged_files"] = new JsonArray(result.Damaged.Select(d => (JsonNode)new JsonObject
                {
                    ["id"] = d.Id.ToString(),
                    ["message"] = d.Message,
                    ["removed"] = d.Removed,
                }).ToArray()),
            });
            return ExitCodes.Success;
        });
        return command;
    }
}
