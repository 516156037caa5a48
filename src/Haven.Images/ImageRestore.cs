using Haven.Core;
using Haven.Core.Posix;
using Microsoft.Win32.SafeHandles;

namespace Haven.Images;

public sealed record ImageRestoreOptions
{
    /// <summary>Block devices or image files; all get the same bytes in one pass over the snapshot.</summary>
    public required IReadOnlyList<string> Targets { get; init; }

    /// <summary>Write to a target that is mounted or holds the running system.</summary>
    public bool Force { get; init; }

    /// <summary>On a target larger than the image, grow the last partition and its ext filesystem to the end (see <see cref="PartitionGrow"/>).</summary>
    public bool Grow { get; init; }

    /// <summary>The changed-block maps: a target whose map validates gets only the blocks that differ from what it holds.</summary>
    public TargetMaps? Maps { get; init; }

    /// <summary>Write every block, whatever the targets' changed-block maps say.</summary>
    public bool Full { get; init; }

    /// <summary>Blocks in flight at once: twice the processors, so writes and reads of one overlap the decoding of another.</summary>
    public int Workers { get; init; } = 2 * Math.Max(2, Environment.ProcessorCount);
}

/// <param name="BlocksUnchanged">Block writes left out, summed over the targets, because a target's changed-block map showed it held them.</param>
/// <param name="Notes">Per target: which changed-block map was used, or why none was.</param>
public sealed record ImageRestoreResult(long BlocksWritten, long BytesWritten, long BlocksVerified, long BlocksUnchanged, IReadOnlyList<string> Errors, IReadOnlyList<string> Adjustments, IReadOnlyList<string> Notes);

/// <summary>
/// Writes an image snapshot to one or more targets in one pass. Every storage chunk is read (AES-GCM authenticates it)
/// and its bytes written to every target; once all pieces of a data block are written, each target
/// reads the block back and checks it against the block's checksum. Unused blocks become holes in new
/// image files (which stay sparse) and zeros elsewhere. A damaged block is named and skipped, and the restore goes on
/// and reports it. Targets are checked before anything is written: each must be at least as large as the image, and
/// (unless forced) not mounted.
/// </summary>
public sealed class ImageRestore(Repository.Repository repo, ImageRestoreOptions options)
{
    /// <summary>Bytes written between two starts of write-back: small enough to keep the disk busy all along.</summary>
    private const long WriteBackEvery = 32L << 20;

    private long _blocksDone;
    private long _bytesWritten;

    public ImageProgress Progress(long blocks) => new(Interlocked.Read(ref _blocksDone), blocks, 0, Interlocked.Read(ref _bytesWritten));

    public async Task<ImageRestoreResult> RunAsync(ObjectId snapshotId, BlockMap map, CancellationToken ct)
    {
        Check(options.Targets, map.ImageSize, options.Force);
        var notes = new List<string>();
        var held = new List<(BlockMap? Map, bool UnusedAreZero)>();
        foreach (string t in options.Targets)
        {
            held.Add(await HeldAsync(t, map, notes, ct).ConfigureAwait(false));
        }

        var targets = options.Targets.Select((t, n) => Open(t, map.ImageSize) with { Held = held[n].Map, UnusedAreZero = held[n].UnusedAreZero }).ToList();
        var errors = new System.Collections.Concurrent.ConcurrentQueue<string>();
        long verified = 0;
        long unchanged = 0;
        long sinceWriteBack = 0;
        var entries = map.Entries;
        // Per data block, the pieces (placements) still to write before it can be read back and verified.
        var pending = new int[entries.LongLength];
        var failed = new int[entries.LongLength]; // 1 once the block is named in an error
        var chunks = new SharedChunks(repo, map.Placements);
        foreach (var p in map.Placements)
        {
            var (first, last) = map.BlocksOf(p);
            for (long b = first; b <= last; b++)
            {
                pending[b]++;
            }
        }

        try
        {
            var zeros = new byte[map.BlockSize];
            var parallel = new ParallelOptions { MaxDegreeOfParallelism = options.Workers, CancellationToken = ct };
            await Parallel.ForAsync(0L, entries.LongLength, parallel, (i, _) =>
            {
                var entry = entries[i];
                long offset = i * map.BlockSize;
                int length = map.LengthOf(i);
                if (entry.Kind == BlockKind.Data)
                {
                    Interlocked.Add(ref unchanged, targets.Count(t => t.Holds(i, entry)));
                    return ValueTask.CompletedTask;
                }

                foreach (var t in targets.Where(t => !t.FreshSparse))
                {
                    if (t.Holds(i, entry))
                    {
                        Interlocked.Increment(ref unchanged);
                        continue;
                    }

                    // Image files stay sparse; disks (and file systems without holes) get zeros.
                    if (!t.IsFile || !Posix.PunchHole(t.Handle, offset, length))
                    {
                        Posix.PWriteAll(t.Handle, zeros.AsSpan(0, length), offset);
                    }
                }

                Interlocked.Increment(ref _blocksDone);
                return ValueTask.CompletedTask;
            }).ConfigureAwait(false);

            await Parallel.ForAsync(0, map.Placements.Length, parallel, async (n, token) =>
            {
                var p = map.Placements[n];
                var (first, last) = map.BlocksOf(p);
                // Each target writes the bytes of the blocks it does not hold already, in as few writes as it can.
                var writes = new List<(Target Target, Placement Piece)>();
                foreach (var t in targets)
                {
                    for (long b = first; b <= last; b++)
                    {
                        if (t.Holds(b, entries[b]))
                        {
                            continue;
                        }

                        var piece = p.Clip(b * map.BlockSize, (b * map.BlockSize) + map.LengthOf(b));
                        if (writes.Count > 0 && writes[^1].Target == t && writes[^1].Piece.End == piece.Offset)
                        {
                            piece = p.Clip(writes[^1].Piece.Offset, piece.End);
                            writes[^1] = (t, piece);
                        }
                        else
                        {
                            writes.Add((t, piece));
                        }
                    }
                }

                byte[]? plaintext = null;
                try
                {
                    if (writes.Count > 0)
                    {
                        string? problem = null;
                        try
                        {
                            (plaintext, int plainLength) = await chunks.GetAsync(p.Id, token).ConfigureAwait(false);
                            if (plainLength < (long)p.Skip + p.Length)
                            {
                                problem = $"chunk {p.Id.Short} holds {plainLength} bytes, fewer than the {p.Skip + p.Length} its placement needs";
                            }
                        }
                        catch (HavenException e) when (e.Code is ErrorCode.Corrupt or ErrorCode.NotFound)
                        {
                            problem = $"chunk {p.Id.Short} cannot be read: {e.Message}";
                        }

                        if (problem is not null)
                        {
                            // Named once each, and only the blocks that some target still needed.
                            for (long b = first; b <= last; b++)
                            {
                                if (targets.Any(t => !t.Holds(b, entries[b])) && Interlocked.Exchange(ref failed[b], 1) == 0)
                                {
                                    long start = b * map.BlockSize;
                                    errors.Enqueue($"block {b} (bytes {start}-{start + map.LengthOf(b) - 1}): {problem}");
                                }
                            }
                        }
                        else
                        {
                            foreach (var (t, piece) in writes)
                            {
                                Posix.PWriteAll(t.Handle, plaintext.AsSpan(piece.Skip, piece.Length), piece.Offset);
                                Interlocked.Add(ref _bytesWritten, piece.Length);
                            }
                        }
                    }
                }
                finally
                {
                    if (plaintext is not null)
                    {
                        chunks.Release(plaintext);
                    }
                }

                for (long b = first; b <= last; b++)
                {
                    if (Interlocked.Decrement(ref pending[b]) == 0)
                    {
                        // The blob was authenticated when it was decrypted; the block's checksum is checked on what each
                        // target reads back, which proves both that the chunks hold the block and that the target holds it.
                        if (Volatile.Read(ref failed[b]) == 0)
                        {
                            Interlocked.Add(ref verified, Verify(b, entries[b], map, targets, errors));
                        }

                        Interlocked.Increment(ref _blocksDone);
                    }
                }

                if (writes.Count > 0 && Interlocked.Add(ref sinceWriteBack, p.Length) >= WriteBackEvery)
                {
                    // Start the disk on what is written so far; the closing fsync then waits for little.
                    Interlocked.Exchange(ref sinceWriteBack, 0);
                    foreach (var t in targets)
                    {
                        Posix.StartWriteBack(t.Handle, 0, 0);
                    }
                }
            }).ConfigureAwait(false);

            foreach (var t in targets)
            {
                Posix.FSync(t.Handle);
            }
        }
        finally
        {
            foreach (var t in targets)
            {
                t.Handle.Dispose();
            }
        }

        // Only a target that holds the whole image is adapted to its larger size. A target that holds exactly the
        // snapshot gets a changed-block map; one whose table or filesystem was adapted holds something else.
        var adjustments = new List<string>();
        if (errors.IsEmpty)
        {
            foreach (string t in options.Targets)
            {
                var adjusted = PartitionGrow.Apply(t, map.ImageSize, options.Grow);
                adjustments.AddRange(adjusted.Select(a => $"{t}: {a}"));
                string real = RealPath.Of(t);
                if (options.Maps is { } maps && adjusted.Count == 0 && !IsMounted(real) && TargetStamp.Of(real) is { } stamp)
                {
                    maps.Record(real, snapshotId, unusedAreZero: true, stamp);
                }
            }
        }

        return new ImageRestoreResult(Interlocked.Read(ref _blocksDone), Interlocked.Read(ref _bytesWritten), verified, Interlocked.Read(ref unchanged),
            errors.OrderBy(e => e, StringComparer.Ordinal).ToList(), adjustments, notes);
    }

    /// <summary>Reads block <paramref name="index"/> back from every target that was written and checks it against its checksum; returns how many matched.</summary>
    private int Verify(long index, BlockEntry entry, BlockMap map, List<Target> targets, System.Collections.Concurrent.ConcurrentQueue<string> errors)
    {
        long offset = index * map.BlockSize;
        int length = map.LengthOf(index);
        var readBack = BufferPool.Large.Rent(length);
        try
        {
            int matched = 0;
            foreach (var t in targets.Where(t => !t.Holds(index, entry)))
            {
                int n = Posix.PRead(t.Handle, readBack.AsSpan(0, length), offset);
                if (n != length || repo.Key.BlobId(readBack.AsSpan(0, length)) != entry.Id)
                {
                    errors.Enqueue($"block {index} (bytes {offset}-{offset + length - 1}) of {t.Path} does not match its checksum {entry.Id.Short} after it was written");
                }
                else
                {
                    matched++;
                }
            }

            return matched;
        }
        finally
        {
            BufferPool.Large.Return(readBack);
        }
    }

    /// <summary>
    /// What <paramref name="target"/> holds by its changed-block map, when the map validates and names a snapshot of
    /// the same shape; the map is forgotten either way, as the target is about to be written.
    /// </summary>
    private async Task<(BlockMap? Map, bool UnusedAreZero)> HeldAsync(string target, BlockMap map, List<string> notes, CancellationToken ct)
    {
        string real = RealPath.Of(target);
        if (options.Maps is not { } maps)
        {
            return (null, false);
        }

        var (found, reason) = maps.Find(real);
        maps.Forget(real);
        if (found is null)
        {
            if (reason is not null)
            {
                notes.Add($"{target}: its changed-block map is not used, because {reason}; every block is written");
            }

            return (null, false);
        }

        if (options.Full || IsMounted(real))
        {
            notes.Add($"{target}: every block is written ({(options.Full ? "--full" : "it is mounted, and its page cache may hold writes")})");
            return (null, false);
        }

        var held = await ImageSnapshots.TryLoadMapAsync(repo, found.Snapshot, ct).ConfigureAwait(false);
        if (held is null || held.ImageSize != map.ImageSize || held.BlockSize != map.BlockSize)
        {
            notes.Add($"{target}: its changed-block map names snapshot {found.Snapshot[..8]}, which {(held is null ? "is gone" : "has another size or block size")}; every block is written");
            return (null, false);
        }

        notes.Add($"{target}: holds snapshot {found.Snapshot[..8]} (its changed-block map validates); only blocks that differ are written");
        return (held, found.UnusedAreZero);
    }

    /// <summary>
    /// Decoded storage chunks for a restore, in pooled buffers. A chunk that one placement uses is read for it and
    /// returned after it. A chunk that several placements use (an earlier chunk kept around changed blocks, or a copy
    /// found elsewhere in the image) is decoded once while it is among the last few asked for: its buffer goes back to
    /// the pool when it has left that list and its last user is done.
    /// </summary>
    private sealed class SharedChunks
    {
        private const int Kept = 8;
        private readonly Repository.Repository _repo;
        private readonly HashSet<ObjectId> _shared;
        private readonly List<Entry> _recent = [];

        /// <summary>Entries that left <see cref="_recent"/> while a worker still used their buffer.</summary>
        private readonly List<Entry> _evicted = [];
        private readonly Lock _lock = new();

        public SharedChunks(Repository.Repository repo, Placement[] placements)
        {
            _repo = repo;
            _shared = placements.GroupBy(p => p.Id).Where(g => g.Skip(1).Any()).Select(g => g.Key).ToHashSet();
        }

        private sealed class Entry(ObjectId id, Task<(byte[] Buffer, int Length)> read)
        {
            public ObjectId Id { get; } = id;

            public Task<(byte[] Buffer, int Length)> Read { get; } = read;

            public int Users { get; set; }

            public bool Evicted { get; set; }
        }

        /// <summary>The chunk's bytes and their length; give the buffer back through <see cref="Release"/>.</summary>
        public async Task<(byte[] Buffer, int Length)> GetAsync(ObjectId id, CancellationToken ct)
        {
            if (!_shared.Contains(id))
            {
                return await _repo.ReadBlobPooledAsync(id, ct).ConfigureAwait(false);
            }

            Entry entry;
            lock (_lock)
            {
                int at = _recent.FindIndex(r => r.Id == id);
                if (at >= 0)
                {
                    entry = _recent[at];
                    _recent.RemoveAt(at);
                }
                else
                {
                    entry = new Entry(id, _repo.ReadBlobPooledAsync(id, CancellationToken.None));
                    if (_recent.Count == Kept)
                    {
                        Evict(_recent[0]);
                        _recent.RemoveAt(0);
                    }
                }

                entry.Users++;
                _recent.Add(entry);
            }

            try
            {
                return await entry.Read.WaitAsync(ct).ConfigureAwait(false);
            }
            catch
            {
                lock (_lock)
                {
                    Done(entry);
                }

                throw;
            }
        }

        /// <summary>Ends one use of a buffer that <see cref="GetAsync"/> gave.</summary>
        public void Release(byte[] buffer)
        {
            lock (_lock)
            {
                var entry = _recent.Find(Holds) ?? _evicted.Find(Holds);
                if (entry is null)
                {
                    BufferPool.Large.Return(buffer); // a chunk of one placement
                }
                else
                {
                    Done(entry);
                }
            }

            bool Holds(Entry e) => e.Read.IsCompletedSuccessfully && ReferenceEquals(e.Read.Result.Buffer, buffer);
        }

        private void Done(Entry entry)
        {
            entry.Users--;
            if (entry.Users == 0 && entry.Evicted)
            {
                _evicted.Remove(entry);
                Free(entry);
            }
        }

        private void Evict(Entry entry)
        {
            entry.Evicted = true;
            if (entry.Users == 0)
            {
                Free(entry);
            }
            else
            {
                _evicted.Add(entry);
            }
        }

        private static void Free(Entry entry)
        {
            if (entry.Read.IsCompletedSuccessfully)
            {
                BufferPool.Large.Return(entry.Read.Result.Buffer);
            }
        }
    }

    private static bool IsMounted(string real) => MountedDevices().Contains(real) || SourceFreeze.MountPointOf(real) is not null;

    private sealed record Target(string Path, SafeFileHandle Handle, bool FreshSparse, bool IsFile = true)
    {
        /// <summary>The snapshot the target holds by its changed-block map, or null (every block is written).</summary>
        public BlockMap? Held { get; init; }

        /// <summary>The held snapshot's blocks that are not data hold zeros (Haven wrote them).</summary>
        public bool UnusedAreZero { get; init; }

        /// <summary>Whether the target already holds what block <paramref name="index"/> must hold.</summary>
        public bool Holds(long index, BlockEntry entry)
        {
            if (Held is null)
            {
                return false;
            }

            var old = Held.Entries[index];
            if (entry.Kind == BlockKind.Data)
            {
                return old.Kind == BlockKind.Data && old.Id == entry.Id;
            }

            // Zeros are wanted, unless the filesystem does not use the block at all.
            return old.Kind != BlockKind.Data && (entry.Kind == BlockKind.Free || old.Kind != BlockKind.Free || UnusedAreZero);
        }
    }

    /// <summary>Checks every target before any is written: its kind, its size, and (unless forced) that it is not mounted.</summary>
    public static void Check(IReadOnlyList<string> targets, long imageSize, bool force)
    {
        if (targets.Count == 0)
        {
            throw new HavenException(ErrorCode.Usage, "name at least one target", "--target /dev/sdX or --target disk.img");
        }

        if (targets.Select(t => System.IO.Path.GetFullPath(t)).Distinct().Count() != targets.Count)
        {
            throw new HavenException(ErrorCode.Usage, "a target is named twice");
        }

        foreach (string target in targets)
        {
            string real = RealPath.Of(target);
            if (!Posix.TryLStat(PosixPath.FromString(real), out var stat, out _))
            {
                if (!Directory.Exists(System.IO.Path.GetDirectoryName(real)))
                {
                    throw new HavenException(ErrorCode.Usage, $"the folder of target {target} does not exist");
                }

                continue; // a new image file
            }

            if (stat.Type is not (FileType.Regular or FileType.BlockDevice))
            {
                throw new HavenException(ErrorCode.Usage, $"target {target} is neither a block device nor a regular file");
            }

            if (stat.Type == FileType.BlockDevice)
            {
                using var handle = Posix.OpenRead(PosixPath.FromString(real));
                long size = Posix.SeekEnd(handle);
                if (size < imageSize)
                {
                    throw new HavenException(ErrorCode.Usage, $"target {target} holds {size} bytes, fewer than the image's {imageSize}", "restore onto a disk at least as large");
                }
            }
            else if (stat.Size < imageSize && stat.Size > 0 && !force)
            {
                throw new HavenException(ErrorCode.Usage, $"target {target} holds {stat.Size} bytes, fewer than the image's {imageSize}", "name a new file, or give --force to let it grow");
            }

            if (!force && MountedDevices().Contains(real))
            {
                throw new HavenException(ErrorCode.Usage, $"target {target} is mounted; writing to it would destroy the filesystem in use", "unmount it, or give --force");
            }
        }
    }

    private Target Open(string path, long imageSize)
    {
        string real = RealPath.Of(path);
        bool exists = Posix.TryLStat(PosixPath.FromString(real), out var stat, out _);
        if (!exists || (stat.Type == FileType.Regular && stat.Size == 0))
        {
            // A new file: set its length, and every block not written stays a hole.
            using (var created = Posix.CreateFile(PosixPath.FromString(real), 0x180, truncate: true))
            {
                Posix.FTruncate(created, imageSize);
            }

            return new Target(path, Posix.OpenWrite(PosixPath.FromString(real)), FreshSparse: true); // read-write, to read back
        }

        var handle = Posix.OpenWrite(PosixPath.FromString(real));
        if (stat.Type == FileType.Regular && stat.Size < imageSize)
        {
            Posix.FTruncate(handle, imageSize); // allowed by Check only with --force
        }

        return new Target(path, handle, FreshSparse: false, IsFile: stat.Type == FileType.Regular);
    }

    /// <summary>Devices that /proc/self/mounts names as mounted (resolved through links).</summary>
    private static HashSet<string> MountedDevices()
    {
        var devices = new HashSet<string>(StringComparer.Ordinal);
        try
        {
            foreach (string line in File.ReadLines("/proc/self/mounts"))
            {
                string device = line.Split(' ')[0];
                if (device.StartsWith('/'))
                {
                    devices.Add(RealPath.Of(device));
                }
            }
        }
        catch (IOException)
        {
        }

        return devices;
    }
}
