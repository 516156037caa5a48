using System.CommandLine;
using System.Text.Json.Nodes;
using Haven.Cli.Infrastructure;
using Haven.Core;
using Haven.Files.Backup;
using Haven.Files.Filters;
using Haven.Repository;

namespace Haven.Cli.Commands;

public static class BackupCommand
{
    public static Command Build()
    {
        var paths = new Argument<string[]>("paths") { Description = "Files and folders to back up", Arity = ArgumentArity.OneOrMore };
        var exclude = new Option<string[]>("--exclude", "-e") { Description = "Exclude paths matching this pattern (repeatable)", AllowMultipleArgumentsPerToken = false };
        var iexclude = new Option<string[]>("--iexclude") { Description = "Like --exclude, ignoring case" };
        var excludeFile = new Option<string[]>("--exclude-file") { Description = "Read exclude patterns from a file, one per line" };
        var iexcludeFile = new Option<string[]>("--iexclude-file") { Description = "Like --exclude-file, ignoring case" };
        var excludeIfPresent = new Option<string[]>("--exclude-if-present") { Description = "Exclude folders that contain this file (NAME or NAME:HEADER)" };
        var excludeCaches = new Option<bool>("--exclude-caches") { Description = "Exclude folders tagged with a valid CACHEDIR.TAG" };
        var oneFs = new Option<bool>("--one-file-system", "-x") { Description = "Stay on the file system of each source path" };
        var largerThan = new Option<string?>("--exclude-larger-than") { Description = "Exclude files larger than SIZE (e.g. 2G)" };
        var tags = new Option<string[]>("--tag") { Description = "Tag the snapshot (repeatable, or comma-separated)" };
        var host = new Option<string?>("--host") { Description = "Host name to record (default: this machine's name)" };
        var dryRun = new Option<bool>("--dry-run", "-n") { Description = "Read and count everything, store nothing" };
        var readConcurrency = new Option<int>("--read-concurrency") { Description = "Files read at once", DefaultValueFactory = _ => 2 };
        var parent = new Option<string?>("--parent") { Description = "Compare with this snapshot instead of the latest of the same host and paths" };
        var force = new Option<bool>("--force") { Description = "Read every file, even those unchanged since the parent snapshot" };
        Runner.RejectOptionLikeValues(paths);
        var command = new Command("backup", "Back up files and folders into a new snapshot")
        {
            paths, exclude, iexclude, excludeFile, iexcludeFile, excludeIfPresent, excludeCaches, oneFs, largerThan, tags, host, dryRun, readConcurrency, parent, force,
        };
        command.Description += """


            Only files whose size, mtime, ctime or inode changed since the parent snapshot are read.
            Exit codes: 0 snapshot complete; 3 snapshot saved but some files could not be read;
            16 a source path does not exist; 1 failed (no snapshot); see 'haven --help' for the rest.

            Examples:
              haven backup ~/Documents ~/Pictures --exclude '*.tmp' --exclude-caches
              haven backup /srv --one-file-system --tag nightly --exclude-file /etc/haven/excludes
            """;
        Runner.SetHandler(command, async (ctx, ct) =>
        {
            var p = ctx.Parse;
            var excludes = new PatternSet();
            foreach (var e in p.GetValue(exclude) ?? []) excludes.Add(e, false);
            foreach (var e in p.GetValue(iexclude) ?? []) excludes.Add(e, true);
            foreach (var f in p.GetValue(excludeFile) ?? []) excludes.AddFile(f, false);
            foreach (var f in p.GetValue(iexcludeFile) ?? []) excludes.AddFile(f, true);
            int concurrency = p.GetValue(readConcurrency);
            if (concurrency is < 1 or > 256)
            {
                throw new HavenException(ErrorCode.Usage, "--read-concurrency must be between 1 and 256");
            }

            await using var repo = await ctx.OpenRepositoryAsync(loadIndex: true, ct);
            ObjectId? parentId = null;
            if (p.GetValue(parent) is { } parentRef)
            {
                parentId = (await repo.FindSnapshotAsync(parentRef, null, ct)).Id;
            }

            var options = new BackupOptions
            {
                CacheRoot = ctx.CacheDir,
                Writer = new BlobWriterOptions { SpoolDirectory = ctx.SpoolDirectory },
                Paths = p.GetValue(paths)!,
                Excludes = excludes,
                ExcludeIfPresent = p.GetValue(excludeIfPresent) ?? [],
                ExcludeCaches = p.GetValue(excludeCaches),
                OneFileSystem = p.GetValue(oneFs),
                ExcludeLargerThan = p.GetValue(largerThan) is { } s ? Units.ParseSize(s, "--exclude-larger-than") : null,
                Tags = (p.GetValue(tags) ?? []).SelectMany(t => t.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)).ToList(),
                Host = p.GetValue(host) ?? Environment.MachineName,
                DryRun = p.GetValue(dryRun),
                ReadConcurrency = concurrency,
                Parent = parentId,
                Force = p.GetValue(force),
            };

            await using var repoLock = await ctx.LockAsync(repo, exclusive: false, "backup", ct);
            options = options with { BeforeCommit = repoLock.EnsureValid };
            var archiver = new Archiver(repo, options);
            var result = await ctx.Output.WithProgressAsync(archiver.RunAsync(ct), () => Render(archiver.Progress));
            foreach (var w in result.Warnings)
            {
                Output.Warn($"{w.Path}: {w.Message}");
            }

            var sum = result.Snapshot.Summary!;
            if (result.RecoveredPacks > 0)
            {
                ctx.Output.Info($"resumed: {result.RecoveredPacks} pack(s) uploaded by an interrupted backup were indexed instead of sent again");
            }

            if (result.ParentId is { } pid)
            {
                ctx.Output.Info($"using parent snapshot {pid.Short}");
            }

            ctx.Output.Line($"Files:   {Units.Count(sum.FilesNew)} new, {Units.Count(sum.FilesChanged)} changed, {Units.Count(sum.FilesUnmodified)} unmodified, {Units.Count(sum.FilesRemoved)} removed");
            ctx.Output.Line($"Dirs:    {Units.Count(sum.DirsNew)} new, {Units.Count(sum.DirsChanged)} changed, {Units.Count(sum.DirsUnmodified)} unmodified");
            ctx.Output.Line($"Added:   {Units.Bytes(sum.DataAdded)} ({Units.Bytes(sum.DataAddedStored)} stored)");
            ctx.Output.Line($"Processed {Units.Count(sum.TotalFilesProcessed)} files, {Units.Bytes(sum.TotalBytesProcessed)} in {Units.Duration(sum.BackupEnd - sum.BackupStart)}");
            if (result.SnapshotId is { } id)
            {
                ctx.Output.Line($"snapshot {id.Short} saved");
            }
            else
            {
                ctx.Output.Line("dry run: nothing was stored");
            }

            if (result.ErrorCount > 0)
            {
                ctx.Output.Line($"{result.ErrorCount} file(s) could not be read and are missing from the snapshot");
            }

            ctx.Output.JsonResult(new JsonObject
            {
                ["snapshot_id"] = result.SnapshotId?.ToString(),
                ["parent"] = result.ParentId?.ToString(),
                ["dry_run"] = options.DryRun,
                ["recovered_packs"] = result.RecoveredPacks,
                ["summary"] = System.Text.Json.JsonSerializer.SerializeToNode(sum, Haven.Repository.Model.RepositoryJson.Default.SnapshotSummary),
                ["warnings"] = new JsonArray(result.Warnings.Select(w => (JsonNode)new JsonObject { ["path"] = w.Path, ["message"] = w.Message, ["error"] = w.IsError }).ToArray()),
            });
            return result.ErrorCount > 0 ? ExitCodes.PartialBackup : ExitCodes.Success;
        });
        return command;
    }

    private static string Render(BackupProgress p)
    {
        double fraction = p.BytesTotal > 0 ? (double)p.BytesDone / p.BytesTotal : 0;
        return $"{Output.Bar(fraction)} {Units.Count(p.FilesDone)}/{Units.Count(p.FilesTotal)}{(p.ScanFinished ? "" : "+")} files "
            + $"{Units.Bytes(p.BytesDone)}/{Units.Bytes(p.BytesTotal)} {Output.Rate(p.BytesDone, p.Elapsed)} {Output.Eta(p.BytesDone, p.BytesTotal, p.Elapsed, p.ScanFinished)}"
            + (p.Errors > 0 ? $" {p.Errors} errors" : "") + $" {Units.Duration(p.Elapsed)}";
    }
}
