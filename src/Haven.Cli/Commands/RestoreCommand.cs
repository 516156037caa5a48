using System.CommandLine;
using System.Text.Json.Nodes;
using Haven.Cli.Infrastructure;
using Haven.Core;
using Haven.Core.Posix;
using Haven.Files.Filters;
using Haven.Files.Restore;

namespace Haven.Cli.Commands;

public static class RestoreCommand
{
    public static Command Build()
    {
        var snapshot = new Argument<string>("snapshot") { Description = "Snapshot id, unique prefix or 'latest'; 'ID:/sub/dir' restores only that folder" };
        var target = new Option<string>("--target", "-t") { Description = "Folder to restore into (created if missing)", Required = true };
        var include = new Option<string[]>("--include", "-i") { Description = "Restore only paths matching this pattern (repeatable)" };
        var exclude = new Option<string[]>("--exclude", "-e") { Description = "Do not restore paths matching this pattern (repeatable)" };
        var iinclude = new Option<string[]>("--iinclude") { Description = "Like --include, ignoring case" };
        var iexclude = new Option<string[]>("--iexclude") { Description = "Like --exclude, ignoring case" };
        var verify = new Option<bool>("--verify") { Description = "Read every restored file back and compare it with the snapshot" };
        var filter = new SnapshotFilterOptions();
        Runner.RejectOptionLikeValues(snapshot);
        var command = new Command("restore", "Restore a snapshot into a folder") { snapshot, target, include, exclude, iinclude, iexclude, verify };
        filter.AddTo(command);
        command.Description += """


            Files already present with the snapshot's size and mtime are skipped, so an interrupted restore can be
            run again. Entries that would land outside the target are refused.
            Exit codes: 0 all restored; 1 some entries failed (listed); 12 wrong password; 17 no such snapshot.

            Examples:
              haven restore latest --target /tmp/restore
              haven restore 1a2b3c4d:/home/user --target /home/user --include 'Documents/**' --verify
            """;
        Runner.SetHandler(command, async (ctx, ct) =>
        {
            var p = ctx.Parse;
            string reference = p.GetValue(snapshot)!;
            string? subPath = null;
            int colon = reference.IndexOf(':');
            if (colon > 0)
            {
                subPath = reference[(colon + 1)..];
                reference = reference[..colon];
            }

            var includes = new PatternSet();
            var excludes = new PatternSet();
            foreach (var x in p.GetValue(include) ?? []) includes.Add(x, false);
            foreach (var x in p.GetValue(iinclude) ?? []) includes.Add(x, true);
            foreach (var x in p.GetValue(exclude) ?? []) excludes.Add(x, false);
            foreach (var x in p.GetValue(iexclude) ?? []) excludes.Add(x, true);

            await using var repo = await ctx.OpenRepositoryAsync(loadIndex: true, ct);
            await using var repoLock = await ctx.LockAsync(repo, exclusive: false, "restore", ct);
            var (id, snap) = await repo.FindSnapshotAsync(reference, filter.Get(p), ct);
            if (snap.Image is not null)
            {
                throw new HavenException(ErrorCode.Usage, $"snapshot {id.Short} is an image of {snap.Paths[0]}, not files", $"restore it with: haven image restore {id.Short} --target DISK-OR-FILE");
            }
            var root = snap.TreeId;
            if (!string.IsNullOrEmpty(subPath) && subPath != "/")
            {
                foreach (var component in subPath.Split('/', StringSplitOptions.RemoveEmptyEntries))
                {
                    var nodes = await repo.LoadTreeAsync(root, ct);
                    var node = nodes.FirstOrDefault(n => n.DisplayName == component)
                        ?? throw new HavenException(ErrorCode.NotFound, $"snapshot {id.Short} has no '{subPath}'", $"list it with 'haven ls {id.Short}'");
                    root = node.Subtree ?? throw new HavenException(ErrorCode.Usage, $"'{subPath}' in snapshot {id.Short} is not a folder");
                }
            }

            var restorer = new Restorer(repo, new RestoreOptions
            {
                Target = p.GetValue(target)!,
                Includes = includes,
                Excludes = excludes,
                Verify = p.GetValue(verify),
            });
            ctx.Output.Info($"restoring snapshot {id.Short} of {string.Join(" ", snap.Paths)} at {snap.Time.ToLocalTime():yyyy-MM-dd HH:mm:ss} to {Path.GetFullPath(p.GetValue(target)!)}");
            var result = await ctx.Output.WithProgressAsync(restorer.RunAsync(root, ct), () =>
            {
                var pr = restorer.Progress;
                double fraction = pr.BytesTotal > 0 ? (double)pr.BytesDone / pr.BytesTotal : 0;
                return $"{Output.Bar(fraction)} {Units.Count(pr.FilesDone)}/{Units.Count(pr.FilesTotal)} files {Units.Bytes(pr.BytesDone)}/{Units.Bytes(pr.BytesTotal)} "
                    + $"{Output.Rate(pr.BytesDone, pr.Elapsed)} {Output.Eta(pr.BytesDone, pr.BytesTotal, pr.Elapsed, true)} {Units.Duration(pr.Elapsed)}";
            });
            foreach (var e in result.Errors)
            {
                Console.Error.WriteLine("error: " + e);
            }

            ctx.Output.Line($"restored {Units.Count(result.Files)} files ({Units.Bytes(result.Bytes)}) and {Units.Count(result.Directories)} folders"
                + (result.FilesSkipped > 0 ? $", {Units.Count(result.FilesSkipped)} already present and skipped" : "")
                + (p.GetValue(verify) ? $", {Units.Count(result.Verified)} verified" : ""));
            if (result.Errors.Count > 0)
            {
                ctx.Output.Line($"{result.Errors.Count} entries could not be restored");
            }

            ctx.Output.JsonResult(new JsonObject
            {
                ["snapshot_id"] = id.ToString(),
                ["files"] = result.Files,
                ["directories"] = result.Directories,
                ["bytes"] = result.Bytes,
                ["skipped"] = result.FilesSkipped,
                ["verified"] = result.Verified,
                ["errors"] = new JsonArray(result.Errors.Select(e => (JsonNode)JsonValue.Create(e)!).ToArray()),
            });
            return result.Errors.Count > 0 ? ExitCodes.Failed : ExitCodes.Success;
        });
        return command;
    }
}
