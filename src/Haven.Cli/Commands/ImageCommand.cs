using System.CommandLine;
using System.Text.Json.Nodes;
using Haven.Cli.Infrastructure;
using Haven.Core;
using Haven.Images;
using Haven.Repository;

namespace Haven.Cli.Commands;

/// <summary><c>haven image backup|restore|info</c>: whole disks, partitions and image files in fixed-size blocks.</summary>
public static class ImageCommand
{
    public static Command Build()
    {
        var command = new Command("image", "Back up and restore whole disks, partitions and image files block by block") { Backup(), Restore(), Info(), Serve(), Ls(), Dump() };
        return command;
    }

    private static Command Backup()
    {
        var source = new Argument<string>("source") { Description = "A block device (/dev/sdb), a partition (/dev/sdb1) or an image file" };
        var blockSize = new Option<string?>("--block-size") { Description = $"Block size, a power of two from 4K to 16M (default {ImageBackupOptions.DefaultBlockSize / 1024}K)" };
        var tags = new Option<string[]>("--tag") { Description = "Tag the snapshot (repeatable); every image snapshot also has the tag 'image'" };
        var host = new Option<string?>("--host") { Description = "Host name to record (default: this machine's name)" };
        var noFreeze = new Option<bool>("--no-freeze") { Description = "Do not freeze a mounted source's filesystem while it is read (the image is then crash-consistent)" };
        var noSnapshot = new Option<bool>("--no-lvm-snapshot") { Description = "Do not read an LVM volume that is in use from a snapshot of it (it is then frozen, if mounted)" };
        var snapshotSize = new Option<string?>("--lvm-snapshot-size") { Description = "Room in the volume group for changes made during the backup (default a tenth of the volume, at least 64M)" };
        var readAll = new Option<bool>("--read-all") { Description = "Read every used block, even when the source's changed-block map shows nothing wrote it since Haven last did" };
        Runner.RejectOptionLikeValues(source);
        var c = new Command("backup", """
            Back up a disk, partition or image file as an image snapshot

            Blocks that are all zeros and holes of sparse files are neither read twice nor stored. Each block's
            checksum is compared with the previous image snapshot of the same source: only changed blocks are stored,
            and every block records the generation in which it last changed. Free blocks of ext2/3/4, XFS, NTFS and
            FAT filesystems are not read. An LVM logical volume that is mounted or open is read from a snapshot of it, made for the
            backup and removed after it. Any other mounted source's filesystem is frozen while it is read, unless it
            is the running system's root or holds the repository, cache or spool; then the image is only
            crash-consistent, and a warning says so. If a backup is killed while a filesystem is frozen, thaw it
            with fsfreeze -u MOUNTPOINT; a snapshot it left behind is removed by the next backup of the volume.
            A source that is not mounted and that nothing wrote since Haven last restored or backed it up (its
            changed-block map validates) is not read at all; --read-all reads it anyway.
            Exit codes: 0 snapshot saved; 16 the source does not exist; 2 bad usage; see 'haven --help'.

            Examples:
              haven image backup /dev/sdb
              haven image backup /var/lib/libvirt/images/vm1.img --tag vm1
            """) { source, blockSize, tags, host, noFreeze, noSnapshot, snapshotSize, readAll };
        Runner.SetHandler(c, async (ctx, ct) =>
        {
            var p = ctx.Parse;
            string path = Path.GetFullPath(p.GetValue(source)!);
            int? size = p.GetValue(blockSize) is { } b ? CheckedBlockSize(Units.ParseSize(b, "--block-size")) : null;
            await using var repo = await ctx.OpenRepositoryAsync(loadIndex: true, ct);
            await using var repoLock = await ctx.LockAsync(repo, exclusive: false, "image backup", ct);
            var backup = new ImageBackup(repo, new ImageBackupOptions
            {
                Source = path,
                BlockSize = size,
                Host = p.GetValue(host) ?? Environment.MachineName,
                Tags = (p.GetValue(tags) ?? []).SelectMany(t => t.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)).ToList(),
                Writer = new BlobWriterOptions { SpoolDirectory = ctx.SpoolDirectory },
                Freeze = !p.GetValue(noFreeze),
                LvmSnapshot = !p.GetValue(noSnapshot),
                LvmSnapshotSize = p.GetValue(snapshotSize) is { } ss ? Units.ParseSize(ss, "--lvm-snapshot-size") : null,
                WrittenPaths = [.. WrittenPaths(ctx)],
                Maps = p.GetValue(readAll) ? null : MapsOf(repo),
            });
            var result = await ctx.Output.WithProgressAsync(backup.RunAsync(ct), () => Render(backup.Progress));
            foreach (string warning in result.Warnings)
            {
                Infrastructure.Output.Warn(warning);
            }

            foreach (string note in result.Notes)
            {
                ctx.Output.Line(note);
            }

            var image = result.Snapshot.Image!;
            var o = ctx.Output;
            o.Line($"image snapshot {result.SnapshotId.Short} of {path}: {Units.Bytes(image.Size)} in {Units.Count(image.Blocks)} blocks of {Units.Bytes(image.BlockSize)}, generation {image.Generation}");
            o.Line($"  {Units.Count(image.BlocksData)} data, {Units.Count(image.BlocksZero)} zero, {Units.Count(image.BlocksHole)} hole, {Units.Count(image.BlocksFree)} free; "
                + $"{Units.Count(image.BlocksChanged)} changed since {(result.ParentId is { } parent ? $"snapshot {parent.Short}" : "nothing (first generation)")}");
            o.Line($"  read {Units.Bytes(result.BytesRead)}, added {Units.Bytes(result.BytesAdded)} ({Units.Bytes(result.BytesStored)} stored); {image.Consistency}; partition table: {image.PartitionTable}");
            o.JsonResult(new JsonObject
            {
                ["snapshot_id"] = result.SnapshotId.ToString(),
                ["parent"] = result.ParentId?.ToString(),
                ["image"] = System.Text.Json.JsonSerializer.SerializeToNode(image),
                ["bytes_read"] = result.BytesRead,
                ["bytes_added"] = result.BytesAdded,
                ["bytes_stored"] = result.BytesStored,
                ["notes"] = new JsonArray([.. result.Notes.Select(n => (JsonNode)n)]),
            });
            return ExitCodes.Success;
        });
        return c;
    }

    private static Command Restore()
    {
        var snapshot = new Argument<string>("snapshot") { Description = "Image snapshot id (or prefix), or 'latest' (the newest image snapshot)" };
        var targets = new Option<string[]>("--target", "-t") { Description = "A block device or image file to write (repeatable: all get the image in one pass)", Required = true };
        var force = new Option<bool>("--force") { Description = "Write to a target that is mounted, or to an image file smaller than the image (it grows)" };
        var full = new Option<bool>("--full") { Description = "Write every block, even to a target whose changed-block map shows it holds most of them" };
        var grow = new Option<bool>("--grow") { Description = "On a larger target, grow the last partition to the end, and its ext2/3/4 filesystem with it" };
        var c = new Command("restore", """
            Restore an image snapshot onto one or more disks or image files

            The repository's password is checked before anything is written. Every block is checked against its
            checksum, written, read back and checked again; a damaged block is named and the restore goes on.
            A target must be at least as large as the image. New image files stay sparse. A target that Haven
            restored or backed up, and that nothing wrote since (its changed-block map validates), gets only the
            blocks that differ from the snapshot it holds; --full writes every block. On a larger target a GPT
            moves to the disk's end; --grow also grows the last partition and its ext2/3/4 filesystem to fill it.
            Exit codes: 0 restored and verified; 1 some blocks could not be restored (named on stderr); 2 bad usage.

            Examples:
              haven image restore latest --target /dev/sdc
              haven image restore 3f2a9c1b --target a.img --target b.img
            """) { snapshot, targets, force, grow, full };
        Runner.SetHandler(c, async (ctx, ct) =>
        {
            var p = ctx.Parse;
            var targetList = (p.GetValue(targets) ?? []).ToList();
            await using var repo = await ctx.OpenRepositoryAsync(loadIndex: true, ct); // the password is checked here, before any target is touched
            await using var repoLock = await ctx.LockAsync(repo, exclusive: false, "image restore", ct);
            var (id, snap) = await FindImageAsync(repo, p.GetValue(snapshot)!, ct);
            var map = await ImageSnapshots.LoadMapAsync(repo, id, snap, ct);
            var restore = new ImageRestore(repo, new ImageRestoreOptions { Targets = targetList, Force = p.GetValue(force), Grow = p.GetValue(grow), Full = p.GetValue(full), Maps = MapsOf(repo) });
            var result = await ctx.Output.WithProgressAsync(restore.RunAsync(id, map, ct), () => Render(restore.Progress(map.Entries.LongLength)));
            foreach (string error in result.Errors)
            {
                Console.Error.WriteLine("error: " + error);
            }

            foreach (string note in result.Notes)
            {
                ctx.Output.Line(note);
            }

            foreach (string adjustment in result.Adjustments)
            {
                ctx.Output.Line(adjustment);
            }

            ctx.Output.Line($"restored image snapshot {id.Short} ({Units.Bytes(map.ImageSize)}, generation {map.Generation}) to {string.Join(", ", targetList)}: "
                + $"{Units.Count(result.BlocksVerified)} block writes verified{(result.BlocksUnchanged > 0 ? $", {Units.Count(result.BlocksUnchanged)} left as they were" : "")}, {result.Errors.Count} error(s)");
            ctx.Output.JsonResult(new JsonObject
            {
                ["snapshot_id"] = id.ToString(),
                ["targets"] = new JsonArray([.. targetList.Select(t => (JsonNode)t)]),
                ["blocks"] = map.Entries.LongLength,
                ["block_writes_verified"] = result.BlocksVerified,
                ["block_writes_unchanged"] = result.BlocksUnchanged,
                ["adjustments"] = new JsonArray([.. result.Adjustments.Select(a => (JsonNode)a)]),
                ["notes"] = new JsonArray([.. result.Notes.Select(n => (JsonNode)n)]),
                ["errors"] = new JsonArray([.. result.Errors.Select(e => (JsonNode)e)]),
            });
            return result.Errors.Count == 0 ? ExitCodes.Success : ExitCodes.Failed;
        });
        return c;
    }

    private static Command Info()
    {
        var snapshot = new Argument<string>("snapshot") { Description = "Image snapshot id (or prefix), or 'latest'" };
        var c = new Command("info", "Show an image snapshot's block map: blocks by kind and generation, and each generation's changes") { snapshot };
        Runner.SetHandler(c, async (ctx, ct) =>
        {
            await using var repo = await ctx.OpenRepositoryAsync(loadIndex: true, ct);
            var (id, snap) = await FindImageAsync(repo, ctx.Parse.GetValue(snapshot)!, ct);
            var map = await ImageSnapshots.LoadMapAsync(repo, id, snap, ct);
            var byGeneration = map.Entries.GroupBy(e => e.Generation).OrderBy(g => g.Key).ToDictionary(g => g.Key, g => g.LongCount());
            var o = ctx.Output;
            int chunks = map.StoredBlobs().Count;
            o.Line($"image snapshot {id.Short} of {snap.Paths[0]} on {snap.Hostname}: {Units.Bytes(map.ImageSize)}, {Units.Count(map.Entries.LongLength)} blocks of {Units.Bytes(map.BlockSize)}, generation {map.Generation}, partition table {snap.Image!.PartitionTable}");
            o.Line($"data held in {Units.Count(chunks)} storage chunks ({Units.Count(map.Placements.Length)} placements, block map format {map.Format})");
            o.Line($"{"generation",10} {"taken",-20} {"changed then",13} {"still current",14}");
            foreach (var h in map.History)
            {
                o.Line($"{h.Generation,10} {h.Time.ToLocalTime(),-20:yyyy-MM-dd HH:mm:ss} {h.BlocksChanged,13} {byGeneration.GetValueOrDefault(h.Generation),14}");
            }

            o.JsonResult(new JsonObject
            {
                ["snapshot_id"] = id.ToString(),
                ["size"] = map.ImageSize,
                ["block_size"] = map.BlockSize,
                ["generation"] = map.Generation,
                ["format"] = map.Format,
                ["storage_chunks"] = chunks,
                ["placements"] = map.Placements.Length,
                ["kinds"] = new JsonObject(map.Entries.GroupBy(e => e.Kind).Select(g => KeyValuePair.Create(g.Key.ToString().ToLowerInvariant(), (JsonNode?)g.LongCount()))),
                ["generations"] = new JsonArray([.. map.History.Select(h => (JsonNode)new JsonObject
                {
                    ["generation"] = h.Generation,
                    ["time"] = h.Time,
                    ["blocks_changed"] = h.BlocksChanged,
                    ["blocks_current"] = byGeneration.GetValueOrDefault(h.Generation),
                })]),
            });
            return ExitCodes.Success;
        });
        return c;
    }

    private static Command Serve()
    {
        var snapshot = new Argument<string>("snapshot") { Description = "Image snapshot id (or prefix), or 'latest'" };
        var listen = new Option<string>("--listen") { Description = "Address and port to listen on (default 127.0.0.1:10809, the NBD port; port 0 picks a free one)", DefaultValueFactory = _ => "127.0.0.1:10809" };
        var name = new Option<string?>("--name") { Description = "Export name (default: the snapshot's short id)" };
        var writable = new Option<bool>("--writable") { Description = "Accept writes, kept in a temporary overlay that is deleted on exit; the snapshot never changes" };
        var c = new Command("serve", """
            Export an image snapshot over NBD, as a disk any NBD client can read, without restoring it

            Runs until Ctrl-C. Blocks are read from the repository when a client asks for them, and a cache keeps the
            ones read often (filesystem metadata). With --writable, writes go to a temporary copy-on-write overlay
            (in the temp folder) that is deleted when the export stops.

            Examples:
              haven image serve latest                     # then: qemu-img compare nbd://127.0.0.1:10809/ID disk.img
              haven image serve 3f2a9c1b --writable --listen 0.0.0.0:10809 --name vm1
            """) { snapshot, listen, name, writable };
        Runner.SetHandler(c, async (ctx, ct) =>
        {
            var p = ctx.Parse;
            if (!System.Net.IPEndPoint.TryParse(p.GetValue(listen)!, out var endPoint) || !p.GetValue(listen)!.Contains(':', StringComparison.Ordinal))
            {
                throw new HavenException(ErrorCode.Usage, $"'{p.GetValue(listen)}' is not an address and port", "write --listen 127.0.0.1:10809");
            }

            await using var repo = await ctx.OpenRepositoryAsync(loadIndex: true, ct);
            await using var repoLock = await ctx.LockAsync(repo, exclusive: false, "image serve", ct);
            var (id, snap) = await FindImageAsync(repo, p.GetValue(snapshot)!, ct);
            var map = await ImageSnapshots.LoadMapAsync(repo, id, snap, ct);
            using var volume = new ImageVolume(repo, map, p.GetValue(writable) ? Path.GetTempPath() : null);
            string export = p.GetValue(name) ?? id.Short;
            await using var server = new NbdServer(volume, export, line => Console.Error.WriteLine("haven: " + line));
            try
            {
                server.Start(endPoint);
            }
            catch (System.Net.Sockets.SocketException e)
            {
                throw new HavenException(ErrorCode.Unavailable, $"cannot listen on {endPoint}: {e.Message}", "choose another port with --listen");
            }

            ctx.Output.Line($"serving image snapshot {id.Short} ({Units.Bytes(map.ImageSize)}, {(volume.Writable ? "writable, writes kept in a temporary overlay" : "read-only")}) at nbd://{server.EndPoint}/{export}");
            ctx.Output.JsonResult(new JsonObject { ["snapshot_id"] = id.ToString(), ["url"] = $"nbd://{server.EndPoint}/{export}", ["writable"] = volume.Writable });
            Console.Out.Flush();
            using var stop = CancellationTokenSource.CreateLinkedTokenSource(ct);
            using var term = System.Runtime.InteropServices.PosixSignalRegistration.Create(System.Runtime.InteropServices.PosixSignal.SIGTERM, x => { x.Cancel = true; stop.Cancel(); });
            try
            {
                await Task.Delay(Timeout.Infinite, stop.Token);
            }
            catch (OperationCanceledException)
            {
            }

            return ExitCodes.Success;
        });
        return c;
    }

    /// <summary>The changed-block maps of the repository's targets, kept in its cache folder (none with --no-cache).</summary>
    private static TargetMaps? MapsOf(Haven.Repository.Repository repo) => repo.Cache is { } cache ? new TargetMaps(cache.Directory, repo.Key) : null;

    private static Option<int?> PartitionOption() => new("--partition") { Description = "The partition that holds the filesystem (its number in the partition table; default: the filesystem starts at the image's first byte)" };

    private static Command Ls()
    {
        var snapshot = new Argument<string>("snapshot") { Description = "Image snapshot id (or prefix), or 'latest'" };
        var path = new Argument<string>("path") { Description = "Folder inside the image's filesystem (default /)", Arity = ArgumentArity.ZeroOrOne, DefaultValueFactory = _ => "/" };
        var partition = PartitionOption();
        var c = new Command("ls", "List a folder of the ext2/3/4 filesystem inside an image snapshot, without restoring it") { snapshot, path, partition };
        Runner.SetHandler(c, async (ctx, ct) =>
        {
            await using var repo = await ctx.OpenRepositoryAsync(loadIndex: true, ct);
            var (volume, fs) = await OpenFilesystemAsync(repo, ctx.Parse.GetValue(snapshot)!, ctx.Parse.GetValue(partition), ct);
            using (volume)
            {
                var entries = await fs.ListAsync(ctx.Parse.GetValue(path)!, ct);
                foreach (var e in entries)
                {
                    ctx.Output.Line($"{e.Kind} {e.Size,14} {e.Modified.ToLocalTime():yyyy-MM-dd HH:mm}  {e.Name}");
                }

                ctx.Output.JsonResult(new JsonArray([.. entries.Select(e => (JsonNode)new JsonObject
                {
                    ["name"] = e.Name, ["type"] = e.Kind switch { 'd' => "dir", 'f' => "file", 'l' => "symlink", _ => "other" }, ["size"] = e.Size, ["mtime"] = e.Modified, ["inode"] = e.Inode,
                })]));
            }

            return ExitCodes.Success;
        });
        return c;
    }

    private static Command Dump()
    {
        var snapshot = new Argument<string>("snapshot") { Description = "Image snapshot id (or prefix), or 'latest'" };
        var path = new Argument<string>("path") { Description = "A file inside the image's filesystem" };
        var output = new Option<string?>("--output", "-o") { Description = "Write to this file instead of stdout" };
        var partition = PartitionOption();
        var c = new Command("dump", "Write one file of the ext2/3/4 filesystem inside an image snapshot to stdout, without restoring the image") { snapshot, path, output, partition };
        Runner.SetHandler(c, async (ctx, ct) =>
        {
            await using var repo = await ctx.OpenRepositoryAsync(loadIndex: true, ct);
            var (volume, fs) = await OpenFilesystemAsync(repo, ctx.Parse.GetValue(snapshot)!, ctx.Parse.GetValue(partition), ct);
            using (volume)
            {
                await using var target = ctx.Parse.GetValue(output) is { } file ? File.Create(file) : Console.OpenStandardOutput();
                await fs.DumpAsync(ctx.Parse.GetValue(path)!, target, ct);
            }

            return ExitCodes.Success;
        });
        return c;
    }

    private static async Task<(ImageVolume Volume, Ext4Reader Filesystem)> OpenFilesystemAsync(Haven.Repository.Repository repo, string reference, int? partition, CancellationToken ct)
    {
        var (id, snap) = await FindImageAsync(repo, reference, ct);
        var map = await ImageSnapshots.LoadMapAsync(repo, id, snap, ct);
        var volume = new ImageVolume(repo, map, overlayFolder: null);
        try
        {
            long offset = 0;
            if (partition is { } number)
            {
                var head = new byte[Math.Min(map.ImageSize, PartitionTable.HeadBytes)];
                await volume.ReadAsync(0, head, ct);
                var (_, partitions) = PartitionTable.Parse(head, map.ImageSize);
                offset = partitions.FirstOrDefault(p => p.Number == number)?.Start
                    ?? throw new HavenException(ErrorCode.NotFound, $"the image has no partition {number}", partitions.Count == 0 ? "it has no partition table: leave out --partition" : $"its partitions: {string.Join(", ", partitions.Select(p => p.Number))}");
            }

            return (volume, await Ext4Reader.OpenAsync(volume, offset, ct));
        }
        catch
        {
            volume.Dispose();
            throw;
        }
    }

    private static async Task<(ObjectId Id, Haven.Repository.Model.Snapshot Snapshot)> FindImageAsync(Haven.Repository.Repository repo, string reference, CancellationToken ct)
    {
        var all = await repo.LoadSnapshotsAsync(ct);
        var images = all.Where(s => s.Snapshot.Image is not null).ToList();
        if (reference == "latest" && images.Count == 0)
        {
            throw new HavenException(ErrorCode.NotFound, "the repository holds no image snapshot", "make one with haven image backup SOURCE");
        }

        var found = Haven.Repository.Repository.ResolveSnapshot(reference == "latest" ? images : all, reference, null, repo.Location);
        if (found.Snapshot.Image is null)
        {
            throw new HavenException(ErrorCode.Usage, $"snapshot {found.Id.Short} is a file snapshot, not an image", "restore it with haven restore");
        }

        return found;
    }

    /// <summary>Where an image backup writes: a filesystem that holds one of these is never frozen.</summary>
    private static IEnumerable<string> WrittenPaths(CliContext ctx)
    {
        string repository = ctx.RepositoryLocation;
        if (!repository.Contains(':', StringComparison.Ordinal) || repository.StartsWith('/'))
        {
            yield return Path.GetFullPath(repository);
        }

        yield return ctx.CacheRoot;
        yield return ctx.SpoolDirectory;
        yield return Path.GetTempPath();
    }

    private static int CheckedBlockSize(long size) =>
        size is >= 4096 and <= 16 << 20 && (size & (size - 1)) == 0
            ? (int)size
            : throw new HavenException(ErrorCode.Usage, $"--block-size must be a power of two from 4K to 16M, not {size}");

    private static string Render(ImageProgress p) =>
        $"{Units.Count(p.BlocksDone)}/{Units.Count(p.Blocks)} blocks, {Units.Bytes(p.BytesRead)} read, {Units.Bytes(p.BytesAdded)} added";
}
