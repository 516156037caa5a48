using System.CommandLine;
using System.Text.Json.Nodes;
using Haven.Cli.Infrastructure;
using Haven.Core;
using Haven.Core.Posix;
using Haven.Repository.Maintenance;

namespace Haven.Cli.Commands;

public static class DiffCommand
{
    public static Command Build()
    {
        var first = new Argument<string>("snapshot1") { Description = "The older snapshot: id, unique prefix or 'latest'" };
        var second = new Argument<string>("snapshot2") { Description = "The newer snapshot: id, unique prefix or 'latest'" };
        var noMetadata = new Option<bool>("--no-metadata") { Description = "Do not list entries whose metadata alone changed (U); they are still counted" };
        var command = new Command("diff", "Show what changed between two snapshots") { first, second, noMetadata };
        command.Description += """


            Each line starts with what happened to the entry:
              +  added (only in the second snapshot)     -  removed (only in the first)
              M  content changed                         U  metadata only (mode, owner, mtime, xattrs)
            Folders end in '/'. An entry whose type changed is listed as removed and added. Totals follow.
            Unchanged folders are skipped without being read, so diffs of large snapshots are quick.
            Exit codes: 0 compared; 17 no such snapshot.

            Examples:
              haven diff 1a2b3c4d 5e6f7a8b
              haven diff 1a2b3c4d latest --no-metadata --json
            """;
        Runner.SetHandler(command, async (ctx, ct) =>
        {
            var p = ctx.Parse;
            bool showMetadata = !p.GetValue(noMetadata);
            await using var repo = await ctx.OpenRepositoryAsync(loadIndex: true, ct);
            var (idA, a) = await repo.FindSnapshotAsync(p.GetValue(first)!, null, ct);
            var (idB, b) = await repo.FindSnapshotAsync(p.GetValue(second)!, null, ct);
            ctx.Output.Info($"comparing snapshot {idA.Short} ({a.Time.ToLocalTime():yyyy-MM-dd HH:mm:ss}) to {idB.Short} ({b.Time.ToLocalTime():yyyy-MM-dd HH:mm:ss})");
            var changes = new JsonArray();
            var totals = await new SnapshotDiff(repo).CompareAsync(a.TreeId, b.TreeId, e =>
            {
                if (e.Kind == DiffKind.Metadata && !showMetadata)
                {
                    return;
                }

                string path = e.Path + (e.Type == FileType.Directory ? "/" : "");
                if (ctx.Output.IsJson)
                {
                    changes.Add(new JsonObject
                    {
                        ["path"] = path,
                        ["modifier"] = Letter(e.Kind),
                        ["type"] = e.Type.ToString().ToLowerInvariant(),
                        ["old_size"] = e.Old?.Size,
                        ["new_size"] = e.New?.Size,
                    });
                }
                else
                {
                    ctx.Output.Line($"{Letter(e.Kind),-2} {path}");
                }
            }, ct);

            ctx.Output.Line();
            ctx.Output.Line($"Files:       {Units.Count(totals.FilesAdded)} new, {Units.Count(totals.FilesRemoved)} removed, {Units.Count(totals.FilesModified)} changed");
            ctx.Output.Line($"Dirs:        {Units.Count(totals.DirectoriesAdded)} new, {Units.Count(totals.DirectoriesRemoved)} removed");
            ctx.Output.Line($"Others:      {Units.Count(totals.Added - totals.FilesAdded - totals.DirectoriesAdded)} new, {Units.Count(totals.Removed - totals.FilesRemoved - totals.DirectoriesRemoved)} removed, "
                + $"{Units.Count(totals.Modified - totals.FilesModified)} changed");
            ctx.Output.Line($"Metadata:    {Units.Count(totals.Metadata)} entries changed only in metadata");
            ctx.Output.Line($"Added:       {Units.Bytes(totals.BytesAdded)} in new files");
            ctx.Output.Line($"Removed:     {Units.Bytes(totals.BytesRemoved)} in removed files");
            ctx.Output.JsonResult(new JsonObject
            {
                ["snapshot1"] = idA.ToString(),
                ["snapshot2"] = idB.ToString(),
                ["changes"] = changes,
                ["totals"] = new JsonObject
                {
                    ["added"] = totals.Added,
                    ["removed"] = totals.Removed,
                    ["modified"] = totals.Modified,
                    ["metadata"] = totals.Metadata,
                    ["files_added"] = totals.FilesAdded,
                    ["files_removed"] = totals.FilesRemoved,
                    ["files_modified"] = totals.FilesModified,
                    ["dirs_added"] = totals.DirectoriesAdded,
                    ["dirs_removed"] = totals.DirectoriesRemoved,
                    ["bytes_added"] = totals.BytesAdded,
                    ["bytes_removed"] = totals.BytesRemoved,
                },
            });
            return ExitCodes.Success;
        });
        return command;
    }

    private static string Letter(DiffKind kind) => kind switch
    {
        DiffKind.Added => "+",
        DiffKind.Removed => "-",
        DiffKind.Modified => "M",
        _ => "U",
    };
}
