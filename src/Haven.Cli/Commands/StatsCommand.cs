using System.CommandLine;
using System.Text.Json.Nodes;
using Haven.Cli.Infrastructure;
using Haven.Repository.Model;
using Haven.Storage;

namespace Haven.Cli.Commands;

public static class StatsCommand
{
    public static Command Build()
    {
        var command = new Command("stats", "Show how much data the repository holds: raw, after deduplication, and stored");
        Runner.SetHandler(command, async (ctx, ct) =>
        {
            await using var repo = await ctx.OpenRepositoryAsync(loadIndex: true, ct);
            var snapshots = await repo.LoadSnapshotsAsync(ct, (id, e) => Output.Warn($"snapshots/{id}: {e.Message}"));
            long packBytes = 0, packs = 0;
            await foreach (var f in repo.Store.ListAsync(FileKind.Pack, ct))
            {
                packBytes += f.Size;
                packs++;
            }

            long dataBlobs = 0, treeBlobs = 0, uniqueRaw = 0, uniqueStored = 0;
            foreach (var b in repo.Index.All())
            {
                if (b.Blob.Type == BlobType.Data) dataBlobs++; else treeBlobs++;
                uniqueRaw += b.Blob.RawLength;
                uniqueStored += b.Blob.Length;
            }

            long restoreSize = snapshots.Sum(s => s.Snapshot.Summary?.TotalBytesProcessed ?? 0);
            ctx.Output.Line($"Snapshots:              {snapshots.Count}");
            ctx.Output.Line($"Total of all snapshots: {Units.Bytes(restoreSize)} (what restoring every snapshot would write)");
            ctx.Output.Line($"Unique data:            {Units.Bytes(uniqueRaw)} in {Units.Count(dataBlobs)} data and {Units.Count(treeBlobs)} tree blobs");
            ctx.Output.Line($"Stored:                 {Units.Bytes(packBytes)} in {Units.Count(packs)} packs");
            if (uniqueRaw > 0)
            {
                ctx.Output.Line($"Compression:            {100.0 * uniqueStored / uniqueRaw:0.0} % of unique data");
            }

            if (packBytes > 0)
            {
                ctx.Output.Line($"Space saving:           {restoreSize / (double)packBytes:0.00}x (all snapshots vs stored)");
            }

            ctx.Output.JsonResult(new JsonObject
            {
                ["snapshots"] = snapshots.Count,
                ["total_size"] = restoreSize,
                ["unique_raw_size"] = uniqueRaw,
                ["unique_stored_size"] = uniqueStored,
                ["stored_size"] = packBytes,
                ["packs"] = packs,
                ["data_blobs"] = dataBlobs,
                ["tree_blobs"] = treeBlobs,
            });
            return 0;
        });
        return command;
    }
}
