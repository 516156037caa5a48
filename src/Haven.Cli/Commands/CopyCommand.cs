using System.CommandLine;
using System.Diagnostics;
using System.Text.Json.Nodes;
using Haven.Cli.Infrastructure;
using Haven.Core;
using Haven.Repository;
using Haven.Repository.Maintenance;
using Haven.Repository.Model;
using Haven.Storage;
using Haven.Storage.S3;

namespace Haven.Cli.Commands;

public static class CopyCommand
{
    public static Command Build()
    {
        var ids = new Argument<string[]>("snapshot") { Description = "Snapshots to copy: ids, unique prefixes or 'latest' (default: all that match the filters)", Arity = ArgumentArity.ZeroOrMore };
        var fromRepo = new Option<string?>("--from-repo") { Description = "The source repository (env HAVEN_FROM_REPOSITORY)" };
        var fromPasswordFile = new Option<string?>("--from-password-file") { Description = "Read the source repository's password from this file (env HAVEN_FROM_PASSWORD_FILE)" };
        var fromPasswordCommand = new Option<string?>("--from-password-command") { Description = "Run this shell command for the source repository's password (env HAVEN_FROM_PASSWORD_COMMAND)" };
        var filter = new SnapshotFilterOptions();
        var command = new Command("copy", "Copy snapshots from another repository into this one") { ids, fromRepo, fromPasswordFile, fromPasswordCommand };
        filter.AddTo(command);
        command.Description += """


            The destination is the repository given by --repo (or HAVEN_REPOSITORY); the source by --from-repo.
            Only data the destination lacks is sent. The repositories may have different passwords and keys: data is
            then read from the source and re-encrypted for the destination. Snapshots copied before (also by an earlier,
            interrupted run) are recognised and skipped. Source password, in order: --from-password-command,
            --from-password-file, HAVEN_FROM_PASSWORD_COMMAND, HAVEN_FROM_PASSWORD_FILE, HAVEN_FROM_PASSWORD, a prompt.
            Both repositories are locked shared.
            Exit codes: 0 copied; 11 a repository is locked; 12 a wrong password; 14 the source is damaged
            ('haven check' names what); 17 no such snapshot.

            Examples:
              haven copy --repo /mnt/offsite --from-repo /srv/backup --from-password-file /root/backup-pass
              HAVEN_FROM_REPOSITORY=/srv/backup haven copy --repo s3:https://s3.example.com/bucket --host laptop latest
            """;
        Runner.SetHandler(command, async (ctx, ct) =>
        {
            var p = ctx.Parse;
            string sourceLocation = p.GetValue(fromRepo) ?? CliContext.Env("HAVEN_FROM_REPOSITORY")
                ?? throw new HavenException(ErrorCode.Usage, "no source repository given", "pass --from-repo LOCATION or set HAVEN_FROM_REPOSITORY");
            if (SourceStore.SameLocation(sourceLocation, ctx.RepositoryLocation))
            {
                throw new HavenException(ErrorCode.Usage, "the source and the destination are the same repository", "--repo names the destination, --from-repo the source");
            }

            var sourceStore = SourceStore.Open(sourceLocation);
            string sourcePassword = SourceStore.Password(p.GetValue(fromPasswordCommand), p.GetValue(fromPasswordFile));
            await using var source = await OpenSourceAsync(sourceStore, sourcePassword, ct);
            await using var destination = await ctx.OpenRepositoryAsync(loadIndex: false, ct);
            await using var sourceLock = await ctx.LockAsync(source, exclusive: false, "copy (source)", ct);
            await using var destinationLock = await ctx.LockAsync(destination, exclusive: false, "copy", ct);
            await source.LoadIndexAsync(ct);
            await destination.LoadIndexAsync(ct);

            var selected = await SnapshotReferences.SelectAsync(source, p.GetValue(ids) ?? [], filter.Get(p), ct);
            if (selected.Count == 0)
            {
                ctx.Output.Line("no snapshot to copy");
                ctx.Output.JsonResult(new JsonObject { ["copied"] = 0, ["skipped"] = 0, ["snapshots"] = new JsonArray() });
                return ExitCodes.Success;
            }

            var copier = new Copier(source, destination)
            {
                BeforeCommit = destinationLock.EnsureValid,
                OnSnapshot = s =>
                {
                    string what = $"snapshot {s.Source.Short} of {string.Join(" ", s.Snapshot.Paths)} at {s.Snapshot.Time.ToLocalTime():yyyy-MM-dd HH:mm:ss}";
                    ctx.Output.Line(s.Skipped ? $"{what}: already in the destination as {s.Destination?.Short}, skipped" : $"{what}: copied as {s.Destination?.Short}");
                },
            };
            ctx.Output.Info($"copying {selected.Count} snapshot(s) from {source.Location} to {destination.Location}"
                + (copier.SameIdKey ? " (same keys: trees are copied unchanged)" : ""));
            var result = await ctx.Output.WithProgressAsync(copier.RunAsync(selected, ct), () =>
            {
                var pr = copier.Progress;
                return $"{Output.Bar(pr.SnapshotsTotal == 0 ? 0 : (double)pr.SnapshotsDone / pr.SnapshotsTotal)} {pr.SnapshotsDone}/{pr.SnapshotsTotal} snapshots, "
                    + $"{Units.Count(pr.TreesDone)} trees, {Units.Count(pr.BlobsRead)} blobs read, {Units.Count(pr.BlobsCopied)} sent ({Units.Bytes(pr.BytesCopied)})";
            });

            ctx.Output.Line($"{result.SnapshotsCopied} snapshot(s) copied, {result.SnapshotsSkipped} already present; "
                + $"sent {Units.Count(result.DataBlobsCopied)} data and {Units.Count(result.TreeBlobsCopied)} tree blob(s), "
                + $"{Units.Bytes(result.BytesCopied)} ({Units.Bytes(result.BytesStored)} stored)");
            ctx.Output.JsonResult(new JsonObject
            {
                ["copied"] = result.SnapshotsCopied,
                ["skipped"] = result.SnapshotsSkipped,
                ["data_blobs"] = result.DataBlobsCopied,
                ["tree_blobs"] = result.TreeBlobsCopied,
                ["bytes"] = result.BytesCopied,
                ["bytes_stored"] = result.BytesStored,
                ["trees_read"] = result.TreesRead,
                ["data_blobs_read"] = result.DataBlobsRead,
                ["same_keys"] = result.SameIdKey,
                ["snapshots"] = new JsonArray(result.Snapshots.Select(s => (JsonNode)new JsonObject
                {
                    ["source"] = s.Source.ToString(),
                    ["destination"] = s.Destination?.ToString(),
                    ["skipped"] = s.Skipped,
                }).ToArray()),
            });
            return ExitCodes.Success;
        });
        return command;
    }

    private static async Task<Haven.Repository.Repository> OpenSourceAsync(IStore store, string password, CancellationToken ct)
    {
        try
        {
            return await Haven.Repository.Repository.OpenAsync(store, password, null, ct).ConfigureAwait(false);
        }
        catch (HavenException e) when (e.Code == ErrorCode.WrongPassword)
        {
            await store.DisposeAsync().ConfigureAwait(false);
            throw new HavenException(ErrorCode.WrongPassword, e.Message.Replace("the password", "the source password", StringComparison.Ordinal),
                "check the source password (--from-password-file, --from-password-command, HAVEN_FROM_PASSWORD_FILE, HAVEN_FROM_PASSWORD)", e);
        }
        catch
        {
            await store.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>The source repository of <c>copy</c>: its own --from-* options and HAVEN_FROM_* variables.</summary>
    private static class SourceStore
    {
        public static IStore Open(string location) => CliContext.OpenStoreAt(location, forInit: false, "source repository", "--from-repo");

        public static bool SameLocation(string a, string b) =>
            S3StoreOptions.IsS3Url(a) || S3StoreOptions.IsS3Url(b) || HostedLocation.Is(a) || HostedLocation.Is(b)
                ? string.Equals(a.TrimEnd('/'), b.TrimEnd('/'), StringComparison.Ordinal)
                : string.Equals(CliContext.LocalPath(a).TrimEnd('/'), CliContext.LocalPath(b).TrimEnd('/'), StringComparison.Ordinal);

        public static string Password(string? command, string? file) =>
            CliContext.ResolvePassword(
                command ?? CliContext.Env("HAVEN_FROM_PASSWORD_COMMAND"),
                file ?? CliContext.Env("HAVEN_FROM_PASSWORD_FILE"),
                Environment.GetEnvironmentVariable("HAVEN_FROM_PASSWORD"),
                "source repository password: ");
    }
}

/// <summary>Turns snapshot arguments ("latest", ids, unique prefixes) and filters into snapshots; shared by copy, repair and find.</summary>
internal static class SnapshotReferences
{
    /// <summary>
    /// The snapshots named by <paramref name="references"/>, or with none, every snapshot that matches
    /// <paramref name="filter"/>; oldest first, without duplicates. "latest" is the newest that matches the filter.
    /// Damaged snapshot files are warned about and left out.
    /// </summary>
    public static async Task<List<(ObjectId Id, Snapshot Snapshot)>> SelectAsync(Haven.Repository.Repository repo, IReadOnlyList<string> references, SnapshotFilter filter, CancellationToken ct)
    {
        var all = await repo.LoadSnapshotsAsync(ct, (id, e) => Output.Warn($"snapshots/{id}: {e.Message}"));
        if (references.Count == 0)
        {
            return all.Where(s => filter.Matches(s.Snapshot)).ToList();
        }

        var chosen = new HashSet<ObjectId>();
        foreach (var reference in references)
        {
            chosen.Add(Haven.Repository.Repository.ResolveSnapshot(all, reference, filter, repo.Location).Id);
        }

        return all.Where(s => chosen.Contains(s.Id)).ToList();
    }
}
