using System.Buffers;
using System.Threading.Channels;
using Haven.Core;
using Haven.Core.Posix;
using Haven.Repository;
using Haven.Repository.Model;
using Microsoft.Win32.SafeHandles;

namespace Haven.Images;

public sealed record ImageBackupOptions
{
    /// <summary>Block size of a source's first image snapshot when none is given (see docs/benchmarks.md).</summary>
    public const int DefaultBlockSize = 64 * 1024;

    /// <summary>A block device, a partition or an image file (absolute path).</summary>
    public required string Source { get; init; }

    /// <summary>Null: the block size of the source's previous image snapshot, so its blocks compare, or else <see cref="DefaultBlockSize"/>.</summary>
    public int? BlockSize { get; init; }

    public string Host { get; init; } = Environment.MachineName;

    public IReadOnlyList<string> Tags { get; init; } = [];

    public BlobWriterOptions? Writer { get; init; }

    /// <summary>Blocks hashed, compressed and encrypted at once.</summary>
    public int Workers { get; init; } = Math.Max(2, Environment.ProcessorCount);

    public DateTimeOffset? Time { get; init; }

    /// <summary>Freeze a mounted source's filesystem while it is read, when that is safe (see <see cref="SourceFreeze"/>).</summary>
    public bool Freeze { get; init; } = true;

    /// <summary>Read an LVM logical volume that is in use from a snapshot of it (see <see cref="LvmSnapshot"/>) rather than freezing it.</summary>
    public bool LvmSnapshot { get; init; } = true;

    /// <summary>The copy-on-write area of that snapshot; null: a tenth of the volume, at least 64 MiB.</summary>
    public long? LvmSnapshotSize { get; init; }

    /// <summary>Folders this backup writes to (repository, cache, spool): a filesystem holding one is never frozen.</summary>
    public IReadOnlyList<string> WrittenPaths { get; init; } = [];

    /// <summary>The changed-block maps: a source whose map validates is not read at all, and one read while nothing wrote it gets a map.</summary>
    public TargetMaps? Maps { get; init; }
}

/// <param name="Notes">Which changed-block map was used, or why none was.</param>
public sealed record ImageBackupResult(ObjectId SnapshotId, Snapshot Snapshot, BlockMap Map, ObjectId? ParentId, long BytesRead, long BytesAdded, long BytesStored, IReadOnlyList<string> Warnings, IReadOnlyList<string> Notes);

/// <summary>Live counts of an image backup.</summary>
public readonly record struct ImageProgress(long BlocksDone, long Blocks, long BytesRead, long BytesAdded);

/// <summary>
/// Backs up a block device, partition or image file as an image snapshot of fixed-size blocks. Blocks that are all
/// zeros, holes of a sparse file or free in the filesystem are not stored (the last two are not even read). Each data
/// block's checksum is compared with the previous image snapshot of the same source on the same host: an unchanged
/// block keeps its generation and the chunks that held it, a changed one gets this snapshot's generation, and runs of
/// changed blocks are cut into content-defined storage chunks (<see cref="StorageChunks"/>). Chunks already in the
/// repository (from any snapshot, file or image) are not stored again.
/// </summary>
public sealed class ImageBackup(Repository.Repository repo, ImageBackupOptions options)
{
    private long _blocksDone;
    private long _blocks;
    private long _bytesRead;
    private BlobWriter? _writer;

    public ImageProgress Progress => new(Interlocked.Read(ref _blocksDone), Interlocked.Read(ref _blocks), Interlocked.Read(ref _bytesRead), _writer?.BytesAdded ?? 0);

    public async Task<ImageBackupResult> RunAsync(CancellationToken ct)
    {
        var start = options.Time ?? repo.Time.GetUtcNow();
        using var source = OpenSource(options.Source, out long size, out bool regular, out string resolved);
        var previous = await ImageSnapshots.FindPreviousAsync(repo, options.Host, options.Source, ct).ConfigureAwait(false);
        BlockMap? before = previous is { } p ? await ImageSnapshots.LoadMapAsync(repo, p.Id, p.Snapshot, ct).ConfigureAwait(false) : null;
        int blockSize = options.BlockSize ?? before?.BlockSize ?? ImageBackupOptions.DefaultBlockSize;
        if (blockSize < 4096 || blockSize > 16 << 20 || (blockSize & (blockSize - 1)) != 0)
        {
            throw new HavenException(ErrorCode.Usage, $"a block size of {blockSize} bytes is not a power of two between 4 KiB and 16 MiB");
        }

        // The map is one array: at 37 bytes a block and 48 a placement (at most about one per 32 KiB), under 2 GiB.
        static long MapBytes(long size, int blockSize) => (BlockMap.BlockCount(size, blockSize) * (5L + ObjectId.Size)) + (size / (32 << 10) * 48);
        if (MapBytes(size, blockSize) > Array.MaxLength)
        {
            int fits = blockSize;
            while (fits < 16 << 20 && MapBytes(size, fits) > Array.MaxLength)
            {
                fits *= 2;
            }

            throw new HavenException(ErrorCode.Usage, $"{options.Source} holds {size} bytes: in blocks of {blockSize} bytes its block map could pass 2 GiB",
                MapBytes(size, fits) <= Array.MaxLength ? $"give --block-size {fits}" : "back it up in parts: partition by partition");
        }

        // Checksums compare block by block only when the blocks are the same.
        var comparable = before is not null && before.BlockSize == blockSize ? before : null;
        uint generation = (before?.Generation ?? 0) + 1;
        long count = BlockMap.BlockCount(size, blockSize);
        Interlocked.Exchange(ref _blocks, count);
        var entries = new BlockEntry[count];
        // A source that is not mounted and that nothing wrote since Haven last saw it holds what its changed-block
        // map says. A mounted one may have writes in the page cache that no counter shows yet.
        var notes = new List<string>();
        bool mounted = SourceFreeze.MountPointOf(resolved) is not null;
        var stamp = options.Maps is not null && !mounted ? TargetStamp.Of(resolved) : null;
        var (held, heldUnusedAreZero) = stamp is null ? (null, false) : await HeldAsync(resolved, size, blockSize, notes, ct).ConfigureAwait(false);

        // A logical volume in use is read from an LVM snapshot; otherwise a mounted source is frozen (when that is
        // safe) before its free-block map is read, and thawed once read.
        using var lvm = held is null && !regular && options.LvmSnapshot ? Images.LvmSnapshot.TryBegin(resolved, mounted, options.LvmSnapshotSize, notes) : null;
        var read = lvm?.Handle ?? source;
        var freeze = lvm is not null ? SourceFreeze.Snapshot : SourceFreeze.Begin(resolved, options.Freeze, options.WrittenPaths);
        // A read error names the source, or says that the LVM snapshot filled up and was dropped.
        T Reading<T>(Func<T> read)
        {
            try
            {
                return read();
            }
            catch (Exception e) when (e is HavenException or PosixException && lvm is not null && lvm.Invalid())
            {
                throw lvm.Dropped();
            }
            catch (PosixException e)
            {
                throw new HavenException(ErrorCode.Failed, $"cannot read {options.Source}: {PosixException.Describe(e.Errno)}");
            }
        }

        var holes = regular && held is null ? DataExtents.Of(source, size) : null;
        var (tableKind, partitions) = Reading(() => PartitionTable.Read(read, size));
        var free = held is null ? Reading(() => FreeRanges.Find(read, size, partitions)) : FreeRanges.None;
        var files = held is null ? Reading(() => FileBoundaries.Find(read, size, partitions)) : FileBoundaries.None;

        _writer = new BlobWriter(repo, options.Writer);
        try
        {
            Placement[] placements;
            if (held is not null)
            {
                for (long i = 0; i < count; i++)
                {
                    entries[i] = Unchanged(comparable, i, held.LengthOf(i), held.Entries[i] with { Generation = generation });
                }

                Interlocked.Exchange(ref _blocksDone, count);
                placements = held.Placements;
            }
            else
            {
                try
                {
                    placements = await ReadAndStoreAsync(read, size, blockSize, holes, free, files, entries, comparable, generation, ct).ConfigureAwait(false);
                }
                catch (Exception e) when (e is HavenException or PosixException && lvm is not null && lvm.Invalid())
                {
                    throw lvm.Dropped();
                }

                // The kernel fails every read once it drops a snapshot, but it may drop it after the last read.
                if (lvm is not null && lvm.Invalid())
                {
                    throw lvm.Dropped();
                }
            }

            freeze.Dispose();
            var warnings = new List<string>();
            if (freeze.Warning is { } w)
            {
                warnings.Add(w);
            }

            if (lvm?.End() is { } notRemoved)
            {
                warnings.Add(notRemoved);
            }

            long changed = entries.LongCount(e => e.Generation == generation);
            var history = (before?.History ?? []).Append(new GenerationRecord(generation, changed, start)).ToList();
            var map = new BlockMap(size, blockSize, generation, entries, history, placements);
            var tree = await ImageSnapshots.SaveTreeAsync(repo, _writer, map, ct).ConfigureAwait(false);
            await _writer.FlushAsync(ct).ConfigureAwait(false);

            var image = new ImageSummary
            {
                Size = size,
                BlockSize = blockSize,
                Generation = generation,
                Blocks = count,
                BlocksData = entries.LongCount(e => e.Kind == BlockKind.Data),
                BlocksZero = entries.LongCount(e => e.Kind == BlockKind.Zero),
                BlocksHole = entries.LongCount(e => e.Kind == BlockKind.Hole),
                BlocksFree = entries.LongCount(e => e.Kind == BlockKind.Free),
                BlocksChanged = changed,
                PartitionTable = tableKind,
                Consistency = freeze.Consistency,
            };
            var snapshot = new Snapshot
            {
                Time = start,
                Tree = tree.ToString(),
                Paths = [options.Source],
                Hostname = options.Host,
                Username = Environment.UserName,
                Uid = ProcessIdentity.UserId,
                Gid = ProcessIdentity.GroupId,
                Tags = ["image", .. options.Tags.Where(t => t != "image")],
                Parent = previous?.Id.ToString(),
                ProgramVersion = "haven " + typeof(ImageBackup).Assembly.GetName().Version?.ToString(3),
                Image = image,
                Summary = new SnapshotSummary
                {
                    BackupStart = start,
                    BackupEnd = repo.Time.GetUtcNow(),
                    FilesNew = before is null ? 1 : 0,
                    FilesChanged = before is not null && changed > 0 ? 1 : 0,
                    FilesUnmodified = before is not null && changed == 0 ? 1 : 0,
                    DataBlobs = _writer.BlobsAdded,
                    DataAdded = _writer.BytesAdded,
                    DataAddedStored = _writer.BytesStored,
                    TotalFilesProcessed = 1,
                    TotalBytesProcessed = Interlocked.Read(ref _bytesRead),
                },
            };
            var id = await repo.SaveSnapshotAsync(snapshot, ct).ConfigureAwait(false);

            // Read while nothing wrote it (the same stamp after as before): the source holds this snapshot now.
            if (stamp is not null && stamp.ChangedIn(TargetStamp.Of(resolved)) is null)
            {
                options.Maps!.Record(resolved, id, held is not null && heldUnusedAreZero, stamp);
            }
            else if (stamp is not null)
            {
                options.Maps!.Forget(resolved);
            }

            return new ImageBackupResult(id, snapshot, map, previous?.Id, Interlocked.Read(ref _bytesRead), _writer.BytesAdded, _writer.BytesStored, warnings, notes);
        }
        finally
        {
            freeze.Dispose(); // thawed on every way out; a second thaw of the same freeze is harmless
            await _writer.DisposeAsync().ConfigureAwait(false);
        }
    }

    /// <summary>The snapshot the source holds by its changed-block map, when the map validates and all its data blocks are in the repository.</summary>
    private async Task<(BlockMap? Map, bool UnusedAreZero)> HeldAsync(string source, long size, int blockSize, List<string> notes, CancellationToken ct)
    {
        var (found, reason) = options.Maps!.Find(source);
        if (found is null)
        {
            if (reason is not null)
            {
                notes.Add($"the changed-block map of {source} is not used, because {reason}; every used block is read");
            }

            return (null, false);
        }

        var held = await ImageSnapshots.TryLoadMapAsync(repo, found.Snapshot, ct).ConfigureAwait(false);
        string? unusable = held is null ? $"snapshot {found.Snapshot[..8]}, which it names, is gone"
            : held.ImageSize != size || held.BlockSize != blockSize ? $"snapshot {found.Snapshot[..8]}, which it names, has another size or block size"
            : !held.StoredBlobs().All(repo.Index.Contains) ? $"blocks of snapshot {found.Snapshot[..8]} are missing from the repository"
            : null;
        if (unusable is not null)
        {
            notes.Add($"the changed-block map of {source} is not used, because {unusable}; every used block is read");
            return (null, false);
        }

        notes.Add($"nothing was read: the changed-block map of {source} shows no write since it held snapshot {found.Snapshot[..8]}");
        return (held, found.UnusedAreZero);
    }

    /// <summary>A block read from the source, and the task that hashes it.</summary>
    private readonly record struct ReadBlock(long Index, byte[] Buffer, int Length, Task<ObjectId?> Checksum);

    /// <summary>A storage chunk cut from a run of data blocks; its id is filled in once it is hashed.</summary>
    private sealed class PendingChunk(long offset, int length)
    {
        public long Offset { get; } = offset;

        public int Length { get; } = length;

        public ObjectId Id { get; set; }
    }

    /// <summary>
    /// Reads every used block, in three stages: this reader, with a task per block that checks it for zeros and
    /// computes its checksum; a sequencer that takes the blocks in order, sets their entries and cuts the changed data
    /// blocks into storage chunks; and workers that hash, compress, encrypt and store the chunks. An unchanged data
    /// block (same checksum as in the previous snapshot) is not stored again: its bytes keep the previous snapshot's
    /// placements, sliced where a placement also held changed bytes. Returns the placements, sorted.
    /// </summary>
    private async Task<Placement[]> ReadAndStoreAsync(SafeFileHandle source, long size, int blockSize, DataExtents? holes, FreeRanges free, FileBoundaries files,
        BlockEntry[] entries, BlockMap? comparable, uint generation, CancellationToken ct)
    {
        // The previous placements are reused only when every blob they name is in the repository.
        var reusable = comparable is not null && comparable.StoredBlobs().All(repo.Index.Contains) ? comparable : null;
        using var failed = CancellationTokenSource.CreateLinkedTokenSource(ct);
        var token = failed.Token;
        // Blocks in flight: enough to keep the hashing tasks busy, and not more than 64 MiB of large blocks.
        var blocks = Channel.CreateBounded<ReadBlock>(Math.Clamp((64 << 20) / blockSize, 2, options.Workers * 4));
        var chunks = Channel.CreateBounded<(PendingChunk Chunk, byte[] Buffer)>(options.Workers * 2);
        var cut = new List<PendingChunk>();
        var sequencer = Task.Run(() => Stage(failed, () => SequenceAsync(blocks.Reader, chunks.Writer, entries, comparable, reusable, generation, blockSize, files, cut, token)), token);
        var workers = Enumerable.Range(0, options.Workers).Select(_ => Task.Run(() => Stage(failed, () => StoreChunksAsync(chunks.Reader, token)), token)).ToList();
        Exception? readFailure = null;
        try
        {
            long count = entries.LongLength;
            for (long i = 0; i < count; i++)
            {
                long offset = i * blockSize;
                int length = BlockMap.LengthOf(size, blockSize, i);
                if (holes is not null && !holes.HasData(offset, length))
                {
                    entries[i] = Unchanged(comparable, i, length, new BlockEntry(BlockKind.Hole, ObjectId.Zero, generation));
                    Interlocked.Increment(ref _blocksDone);
                    continue;
                }

                if (free.Covers(offset, length))
                {
                    entries[i] = Unchanged(comparable, i, length, new BlockEntry(BlockKind.Free, ObjectId.Zero, generation));
                    Interlocked.Increment(ref _blocksDone);
                    continue;
                }

                var buffer = ArrayPool<byte>.Shared.Rent(blockSize);
                ReadFully(source, options.Source, buffer.AsSpan(0, length), offset);
                Interlocked.Add(ref _bytesRead, length);
                var checksum = Task.Run(() => buffer.AsSpan(0, length).IndexOfAnyExcept((byte)0) < 0 ? (ObjectId?)null : repo.Key.BlobId(buffer.AsSpan(0, length)), token);
                await blocks.Writer.WriteAsync(new ReadBlock(i, buffer, length, checksum), token).ConfigureAwait(false);
            }
        }
        catch (Exception e)
        {
            readFailure = e;
            failed.Cancel();
        }
        finally
        {
            blocks.Writer.Complete();
        }

        var stages = Task.WhenAll(workers.Append(sequencer));
        try
        {
            await stages.ConfigureAwait(false);
        }
        catch (Exception) when (readFailure is not null || stages.Exception is not null)
        {
        }

        // The first failure is the one to report; the others are the cancellations it caused.
        var first = new[] { readFailure }.Concat(stages.Exception?.InnerExceptions ?? []).OfType<Exception>()
            .OrderBy(e => e is OperationCanceledException ? 1 : 0).FirstOrDefault();
        if (first is not null)
        {
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(first);
        }

        var placements = cut.Select(c => new Placement(c.Offset, c.Length, 0, c.Id)).ToList();
        if (reusable is not null)
        {
            placements.AddRange(Reused(reusable, entries, size, blockSize));
        }

        placements.Sort((x, y) => x.Offset.CompareTo(y.Offset));
        return placements.ToArray();
    }

    /// <summary>Runs a stage; its failure stops the others.</summary>
    private static async Task Stage(CancellationTokenSource failed, Func<Task> run)
    {
        try
        {
            await run().ConfigureAwait(false);
        }
        catch
        {
            await failed.CancelAsync().ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>Whether block <paramref name="index"/> is data that the previous snapshot held too, at the same place.</summary>
    private static bool Kept(BlockMap? previous, BlockEntry[] entries, long index, int length) =>
        previous is not null && entries[index].Kind == BlockKind.Data && index < previous.Entries.LongLength && previous.LengthOf(index) == length
        && previous.Entries[index] is { Kind: BlockKind.Data } old && old.Id == entries[index].Id;

    private async Task SequenceAsync(ChannelReader<ReadBlock> blocks, ChannelWriter<(PendingChunk, byte[])> chunks, BlockEntry[] entries, BlockMap? comparable,
        BlockMap? reusable, uint generation, int blockSize, FileBoundaries files, List<PendingChunk> cut, CancellationToken ct)
    {
        var cutter = new StorageChunks(repo.Key.ChunkerKey);
        byte[]? buffer = null;
        long start = 0, last = -2;
        int filled = 0, units = 0;

        async Task CutAsync()
        {
            if (filled > 0)
            {
                var chunk = new PendingChunk(start, filled);
                cut.Add(chunk);
                await chunks.WriteAsync((chunk, buffer!), ct).ConfigureAwait(false);
                buffer = null;
                filled = 0;
                units = 0;
            }
        }

        try
        {
            await foreach (var block in blocks.ReadAllAsync(ct).ConfigureAwait(false))
            {
                try
                {
                    var checksum = await block.Checksum.ConfigureAwait(false);
                    long i = block.Index;
                    entries[i] = Unchanged(comparable, i, block.Length, checksum is { } id ? new BlockEntry(BlockKind.Data, id, generation) : new BlockEntry(BlockKind.Zero, ObjectId.Zero, generation));
                    // A run of data blocks ends at a block that is not data or not read, and before a block kept as it was.
                    bool skipped = checksum is null || Kept(reusable, entries, i, block.Length);
                    if (last + 1 != i || skipped)
                    {
                        await CutAsync().ConfigureAwait(false);
                    }

                    last = i;
                    if (skipped)
                    {
                        continue;
                    }

                    for (int at = 0; at < block.Length; at += BlockMap.Unit)
                    {
                        if (filled > 0 && files.At((i * blockSize) + at))
                        {
                            await CutAsync().ConfigureAwait(false); // a file starts or ends here
                        }

                        var unit = block.Buffer.AsSpan(at, Math.Min(BlockMap.Unit, block.Length - at));
                        if (buffer is null)
                        {
                            buffer = BufferPool.Large.Rent(StorageChunks.MaxBytes);
                            start = (i * blockSize) + at;
                        }

                        unit.CopyTo(buffer.AsSpan(filled));
                        filled += unit.Length;
                        units++;
                        if (cutter.CutsAfter(unit, units))
                        {
                            await CutAsync().ConfigureAwait(false);
                        }
                    }
                }
                finally
                {
                    ArrayPool<byte>.Shared.Return(block.Buffer);
                    Interlocked.Increment(ref _blocksDone);
                }
            }

            await CutAsync().ConfigureAwait(false);
        }
        finally
        {
            chunks.Complete();
            if (buffer is not null)
            {
                BufferPool.Large.Return(buffer);
            }
        }
    }

    private async Task StoreChunksAsync(ChannelReader<(PendingChunk Chunk, byte[] Buffer)> chunks, CancellationToken ct)
    {
        await foreach (var (chunk, buffer) in chunks.ReadAllAsync(ct).ConfigureAwait(false))
        {
            try
            {
                var data = buffer.AsMemory(0, chunk.Length);
                chunk.Id = repo.Key.BlobId(data.Span);
                await _writer!.SaveAsync(BlobType.Data, chunk.Id, data, ct).ConfigureAwait(false);
            }
            finally
            {
                BufferPool.Large.Return(buffer);
            }
        }
    }

    /// <summary>The previous snapshot's placements, clipped to the runs of blocks kept as they were.</summary>
    private static IEnumerable<Placement> Reused(BlockMap previous, BlockEntry[] entries, long size, int blockSize)
    {
        for (long i = 0; i < entries.LongLength;)
        {
            if (!Kept(previous, entries, i, BlockMap.LengthOf(size, blockSize, i)))
            {
                i++;
                continue;
            }

            long from = i * blockSize;
            while (i < entries.LongLength && Kept(previous, entries, i, BlockMap.LengthOf(size, blockSize, i)))
            {
                i++;
            }

            long to = Math.Min(size, i * blockSize);
            for (int k = previous.FirstPlacementEndingAfter(from); k < previous.Placements.Length && previous.Placements[k].Offset < to; k++)
            {
                yield return previous.Placements[k].Clip(from, to);
            }
        }
    }

    /// <summary>
    /// The new entry, with the previous generation's number when the block (same length, same content) did not change.
    /// Zero, hole and free blocks all restore as zeros: a block that turns from one into another is unchanged.
    /// </summary>
    private static BlockEntry Unchanged(BlockMap? before, long index, int length, BlockEntry now) =>
        before is not null && index < before.Entries.LongLength && before.LengthOf(index) == length
        && before.Entries[index] is var old && (old.Kind == BlockKind.Data) == (now.Kind == BlockKind.Data) && old.Id == now.Id
            ? now with { Generation = old.Generation }
            : now;

    private static SafeFileHandle OpenSource(string path, out long size, out bool regular, out string resolvedPath)
    {
        FileStat stat;
        byte[] resolved;
        try
        {
            resolved = PosixPath.FromString(RealPath.Of(path));
            stat = Posix.LStat(resolved);
        }
        catch (PosixException e)
        {
            throw new HavenException(e.Errno == Errno.ENOENT ? ErrorCode.SourceNotFound : ErrorCode.AccessDenied, $"cannot read {path}: {PosixException.Describe(e.Errno)}");
        }
        catch (IOException e)
        {
            throw new HavenException(ErrorCode.SourceNotFound, $"cannot read {path}: {e.Message}");
        }

        if (stat.Type is not (FileType.Regular or FileType.BlockDevice))
        {
            throw new HavenException(ErrorCode.Usage, $"{path} is neither a block device nor a regular file", "name a disk, a partition or an image file");
        }

        regular = stat.Type == FileType.Regular;
        resolvedPath = PosixPath.ToDisplay(resolved);
        var handle = Posix.OpenRead(resolved);
        size = regular ? stat.Size : Posix.SeekEnd(handle);
        return handle;
    }

    private static void ReadFully(SafeFileHandle source, string name, Span<byte> buffer, long offset)
    {
        int done = 0;
        while (done < buffer.Length)
        {
            int n;
            try
            {
                n = Posix.PRead(source, buffer[done..], offset + done);
            }
            catch (PosixException e)
            {
                throw new HavenException(ErrorCode.Failed, $"cannot read {name} at byte {offset + done}: {PosixException.Describe(e.Errno)}",
                    "the disk may be failing: check the kernel log (dmesg), and copy what can be read with ddrescue before backing it up again");
            }

            if (n == 0)
            {
                throw new HavenException(ErrorCode.Failed, $"the source ended at byte {offset + done}, before its size; did it shrink while it was read?");
            }

            done += n;
        }
    }
}
