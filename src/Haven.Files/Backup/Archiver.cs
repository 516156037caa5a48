using System.Collections.Concurrent;
using System.Threading.Channels;
using Haven.Core;
using Haven.Core.Posix;
using Haven.Files.Filters;
using Haven.Repository;
using Haven.Repository.Model;
using Microsoft.Win32.SafeHandles;

namespace Haven.Files.Backup;

/// <summary>The outcome of a backup.</summary>
public sealed record BackupResult(ObjectId? SnapshotId, Snapshot Snapshot, ObjectId? ParentId, IReadOnlyList<BackupWarning> Warnings)
{
    /// <summary>Packs an interrupted earlier backup had uploaded without indexing, indexed by this run instead of re-sent.</summary>
    public int RecoveredPacks { get; init; }

    /// <summary>Chunks left out because the store's catalog said another client had stored them (see IChunkCatalog).</summary>
    public long BlobsFoundInCatalog { get; init; }

    /// <summary>Plaintext bytes of those chunks: what did not travel.</summary>
    public long BytesFoundInCatalog { get; init; }

    /// <summary>Entries that could not be read (they are missing from the snapshot).</summary>
    public int ErrorCount => Warnings.Count(w => w.IsError);
}

/// <summary>
/// Backs up files into a repository. The pipeline: a directory walk (the calling task) starts one task per file
/// that must be read; up to <see cref="BackupOptions.ReadConcurrency"/> of them read, chunk and hash at once and hand
/// new chunks through a bounded channel to <see cref="BackupOptions.EncodeConcurrency"/> workers that compress,
/// encrypt and pack them. Memory is bounded by (readers × 2 × max chunk) + (channel capacity × max chunk).
/// Unchanged files (same size, mtime, ctime and inode as in the parent snapshot: the "disk map") are not read.
/// The snapshot is written only after every pack and index it needs.
/// </summary>
public sealed class Archiver
{
    private const string CacheDirTagName = "CACHEDIR.TAG";
    private const string CacheDirSignature = "Signature: 8a477f597d28d172789f06886806bc55";

    private readonly Haven.Repository.Repository _repo;
    private readonly BackupOptions _options;
    private readonly TimeProvider _time;
    private readonly SemaphoreSlim _readSlots;
    private readonly ConcurrentQueue<BackupWarning> _warnings = new();
    private readonly ConcurrentBag<byte[]> _readBuffers = [];
    private readonly List<(string Name, string? Header)> _markers;
    private Channel<ChunkJob>? _chunks;
    private BlobWriter? _writer;
    private long _startTicks;

    private long _filesDone, _bytesDone, _filesTotal, _bytesTotal, _filesNew, _filesChanged, _filesUnmodified, _filesRemoved;
    private long _dirsNew, _dirsChanged, _dirsUnmodified, _dataBlobs, _treeBlobs, _dryBytes;
    private volatile bool _scanFinished;

    /// <summary>
    /// A new chunk for the encoders: a slice of its reader's buffer, not a copy. The reader leaves the slice alone
    /// until <see cref="Done"/> completes (it awaits all of them before it moves or refills the buffer), so chunks
    /// cost no memory beyond the readers' buffers.
    /// </summary>
    private readonly record struct ChunkJob(ObjectId Id, ReadOnlyMemory<byte> Data, TaskCompletionSource Done);

    public Archiver(Haven.Repository.Repository repo, BackupOptions options, TimeProvider? time = null)
    {
        _repo = repo;
        _options = options;
        _time = time ?? repo.Time;
        _readSlots = new SemaphoreSlim(Math.Max(1, options.ReadConcurrency));
        _markers = options.ExcludeIfPresent.Select(ParseMarker).ToList();
        if (options.ExcludeCaches)
        {
            _markers.Add((CacheDirTagName, CacheDirSignature));
        }
    }

    private static (string, string?) ParseMarker(string spec)
    {
        int colon = spec.IndexOf(':');
        return colon < 0 ? (spec, null) : (spec[..colon], spec[(colon + 1)..]);
    }

    public BackupProgress Progress => new(
        Interlocked.Read(ref _filesDone), Interlocked.Read(ref _bytesDone), Interlocked.Read(ref _filesTotal), Interlocked.Read(ref _bytesTotal),
        _scanFinished, Interlocked.Read(ref _filesNew), Interlocked.Read(ref _filesChanged), Interlocked.Read(ref _filesUnmodified),
        (_writer?.BytesAdded ?? 0) + Interlocked.Read(ref _dryBytes), _warnings.Count(w => w.IsError), _time.GetElapsedTime(_startTicks));

    public async Task<BackupResult> RunAsync(CancellationToken ct)
    {
        _startTicks = _time.GetTimestamp();
        var start = _options.Time ?? _time.GetUtcNow();
        var targets = ResolveTargets(_options.Paths);
        var displayPaths = targets.Select(t => t.Display).ToList();

        var (parentId, parent) = await FindParentAsync(displayPaths, ct).ConfigureAwait(false);
        List<Node>? parentRoot = parent is null ? null : await TryLoadTreeAsync(parent.TreeId, ct).ConfigureAwait(false);

        // A dry run stores nothing, so it needs no spool folder (the repository may even be read-only).
        _writer = new BlobWriter(_repo, _options.DryRun ? null : _options.Writer);
        int recovered = 0;
        UploadJournal? journal = null;
        if (!_options.DryRun)
        {
            var journalDirectory = UploadJournal.DirectoryFor(_options.CacheRoot ?? UploadJournal.DefaultCacheRoot(), _repo);
            recovered = await UploadJournal.RecoverAsync(_repo, journalDirectory, ct).ConfigureAwait(false);
            journal = UploadJournal.TryStart(journalDirectory);
            if (journal is not null)
            {
                _writer.PackUploaded += journal.Record;
            }
        }

        _chunks = Channel.CreateBounded<ChunkJob>(new BoundedChannelOptions(Math.Max(2, _options.EncodeConcurrency * 2)) { SingleReader = false, SingleWriter = false });
        var encoders = Enumerable.Range(0, Math.Max(1, _options.EncodeConcurrency)).Select(_ => Task.Run(() => EncodeLoopAsync(ct), ct)).ToArray();
        using var scanCts = CancellationTokenSource.CreateLinkedTokenSource(ct);
        var scanner = Task.Run(() => Scan(targets, scanCts.Token), scanCts.Token);

        ObjectId rootTree = default;
        Exception? failure = null;
        try
        {
            var root = BuildVirtualRoot(targets);
            rootTree = await SaveVirtualDirectoryAsync(root, [], parentRoot, ct).ConfigureAwait(false);
        }
        catch (Exception e)
        {
            failure = e;
        }

        _chunks.Writer.TryComplete();
        scanCts.Cancel();
        try
        {
            await Task.WhenAll(encoders).ConfigureAwait(false);
        }
        catch (Exception e)
        {
            failure ??= e;
        }

        try
        {
            await scanner.ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
        }

        // The first real cause wins: readers only see "channel closed" when an encoder failed.
        if (_encoderFailure is not null || failure is not null)
        {
            await _writer.DisposeAsync().ConfigureAwait(false); // waits for uploads still running
            journal?.Dispose();
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(_encoderFailure ?? failure!);
        }

        if (!_options.DryRun)
        {
            await _writer.FlushAsync(ct).ConfigureAwait(false);
            journal?.Complete(); // every uploaded pack is indexed now
        }

        journal?.Dispose();

        var snapshot = new Snapshot
        {
            Time = start,
            Tree = rootTree.ToString(),
            Paths = displayPaths,
            Hostname = _options.Host,
            Username = Environment.UserName,
            Uid = ProcessIdentity.UserId,
            Gid = ProcessIdentity.GroupId,
            Tags = _options.Tags,
            Parent = parentId?.ToString(),
            Excludes = _options.Excludes.Texts.ToList(),
            ProgramVersion = "haven " + typeof(Archiver).Assembly.GetName().Version?.ToString(3),
            Summary = new SnapshotSummary
            {
                BackupStart = start,
                BackupEnd = _time.GetUtcNow(),
                FilesNew = _filesNew,
                FilesChanged = _filesChanged,
                FilesUnmodified = _filesUnmodified,
                FilesRemoved = _filesRemoved,
                DirsNew = _dirsNew,
                DirsChanged = _dirsChanged,
                DirsUnmodified = _dirsUnmodified,
                DataBlobs = _dataBlobs,
                TreeBlobs = _treeBlobs,
                DataAdded = _options.DryRun ? _dryBytes : _writer.BytesAdded,
                DataAddedStored = _writer.BytesStored,
                TotalFilesProcessed = _filesDone,
                TotalBytesProcessed = _bytesDone,
                Errors = _warnings.Count(w => w.IsError),
            },
        };

        if (!_options.DryRun)
        {
            _options.BeforeCommit?.Invoke();
        }

        ObjectId? id = _options.DryRun ? null : await _repo.SaveSnapshotAsync(snapshot, ct).ConfigureAwait(false);
        await _writer.DisposeAsync().ConfigureAwait(false);
        return new BackupResult(id, snapshot, parentId, _warnings.ToArray()) { RecoveredPacks = recovered, BlobsFoundInCatalog = _writer.BlobsFoundInCatalog, BytesFoundInCatalog = _writer.BytesFoundInCatalog };
    }

    // ---- targets and parent ---------------------------------------------------------------------------------------

    private sealed record Target(string Display, byte[] Path, string[] Components, FileStat Stat);

    private static List<Target> ResolveTargets(IReadOnlyList<string> paths)
    {
        if (paths.Count == 0)
        {
            throw new HavenException(ErrorCode.Usage, "nothing to back up: give at least one path");
        }

        var result = new List<Target>();
        foreach (var p in paths)
        {
            string full = Path.GetFullPath(p);
            if (full.Length > 1)
            {
                full = full.TrimEnd('/');
            }

            var bytes = PosixPath.FromString(full);
            if (!Posix.TryLStat(bytes, out var st, out int errno))
            {
                throw errno == Errno.ENOENT
                    ? new HavenException(ErrorCode.SourceNotFound, $"the source path {full} does not exist", "check the path; nothing was backed up")
                    : new HavenException(ErrorCode.SourceNotFound, $"the source path {full} cannot be read: {new PosixException(errno, "lstat", bytes).Message}");
            }

            result.Add(new Target(full, bytes, PatternSet.Split(full), st));
        }

        // A target inside another target is already covered by it.
        result = result.DistinctBy(t => t.Display).ToList();
        return result.Where(t => !result.Any(o => o != t && IsAncestor(o.Components, t.Components))).OrderBy(t => t.Display, StringComparer.Ordinal).ToList();
    }

    private static bool IsAncestor(string[] a, string[] b) => a.Length < b.Length && a.AsSpan().SequenceEqual(b.AsSpan(0, a.Length));

    private async Task<(ObjectId?, Snapshot?)> FindParentAsync(List<string> paths, CancellationToken ct)
    {
        if (_options.Force)
        {
            return (null, null);
        }

        if (_options.Parent is { } explicitParent)
        {
            return (explicitParent, await _repo.LoadSnapshotAsync(explicitParent, ct).ConfigureAwait(false));
        }

        var all = await _repo.LoadSnapshotsAsync(ct, onDamaged: (_, _) => { }).ConfigureAwait(false);
        var match = all.LastOrDefault(s => s.Snapshot.Hostname == _options.Host && s.Snapshot.Paths.Order(StringComparer.Ordinal).SequenceEqual(paths));
        return match.Snapshot is null ? (null, null) : (match.Id, match.Snapshot);
    }

    private async Task<List<Node>?> TryLoadTreeAsync(ObjectId id, CancellationToken ct)
    {
        try
        {
            return await _repo.LoadTreeAsync(id, ct).ConfigureAwait(false);
        }
        catch (HavenException e) when (e.Code == ErrorCode.Corrupt)
        {
            // A damaged parent only costs speed: everything below is read again.
            _warnings.Enqueue(new BackupWarning("(parent snapshot)", e.Message, false));
            return null;
        }
    }

    // ---- the virtual root: directories above the targets ----------------------------------------------------------

    private sealed class VirtualDir
    {
        public SortedDictionary<string, VirtualDir> Children { get; } = new(StringComparer.Ordinal);

        public Target? Target { get; set; }
    }

    private static VirtualDir BuildVirtualRoot(List<Target> targets)
    {
        var root = new VirtualDir();
        foreach (var t in targets)
        {
            var dir = root;
            foreach (var c in t.Components)
            {
                if (!dir.Children.TryGetValue(c, out var next))
                {
                    dir.Children[c] = next = new VirtualDir();
                }

                dir = next;
            }

            dir.Target = t;
        }

        return root;
    }

    private async Task<ObjectId> SaveVirtualDirectoryAsync(VirtualDir dir, string[] components, List<Node>? old, CancellationToken ct)
    {
        var tasks = new List<Task<Node?>>();
        foreach (var (name, child) in dir.Children)
        {
            var childComponents = components.Append(name).ToArray();
            var nameBytes = PosixPath.FromString(name);
            var oldNode = Find(old, nameBytes);
            if (child.Target is { } target)
            {
                tasks.Add(SaveEntryAsync(target.Path, nameBytes, target.Stat, childComponents, oldNode, target.Stat.Device, ct));
            }
            else
            {
                tasks.Add(SaveIntermediateAsync(child, childComponents, nameBytes, oldNode, ct));
            }
        }

        var nodes = (await Task.WhenAll(tasks).ConfigureAwait(false)).Where(n => n is not null).Select(n => n!).ToList();
        return await SaveTreeAsync(nodes, ct).ConfigureAwait(false);
    }

    private async Task<Node?> SaveIntermediateAsync(VirtualDir dir, string[] components, byte[] name, Node? old, CancellationToken ct)
    {
        var path = PosixPath.FromString("/" + string.Join('/', components));
        List<Node>? oldChildren = old?.Subtree is { } sub ? await TryLoadTreeAsync(sub, ct).ConfigureAwait(false) : null;
        var subtree = await SaveVirtualDirectoryAsync(dir, components, oldChildren, ct).ConfigureAwait(false);
        if (!Posix.TryLStat(path, out var st, out _))
        {
            st = default;
        }

        return MakeNode(name, path, st with { Type = FileType.Directory }, subtree: subtree);
    }

    // ---- entries ------------------------------------------------------------------------------------------------

    private static Node? Find(List<Node>? nodes, byte[] name)
    {
        if (nodes is null)
        {
            return null;
        }

        int lo = 0, hi = nodes.Count - 1;
        while (lo <= hi)
        {
            int mid = (lo + hi) >>> 1;
            int c = nodes[mid].Name.AsSpan().SequenceCompareTo(name);
            if (c == 0)
            {
                return nodes[mid];
            }

            if (c < 0)
            {
                lo = mid + 1;
            }
            else
            {
                hi = mid - 1;
            }
        }

        return null;
    }

    private Task<Node?> SaveEntryAsync(byte[] path, byte[] name, FileStat st, string[] components, Node? old, ulong rootDevice, CancellationToken ct)
    {
        ct.ThrowIfCancellationRequested();
        switch (st.Type)
        {
            case FileType.Directory:
                return SaveDirectoryAsync(path, name, st, components, old, rootDevice, ct);
            case FileType.Regular:
                return SaveFileAsync(path, name, st, old, ct);
            case FileType.Symlink:
                try
                {
                    return Task.FromResult<Node?>(MakeNode(name, path, st, linkTarget: Posix.ReadLink(path)));
                }
                catch (PosixException e)
                {
                    return Task.FromResult(Warn(path, e));
                }

            default:
                return Task.FromResult<Node?>(MakeNode(name, path, st));
        }
    }

    private Node? Warn(byte[] path, Exception e, bool isError = true)
    {
        _warnings.Enqueue(new BackupWarning(PosixPath.ToDisplay(path), e.Message, isError));
        return null;
    }

    private bool IsExcluded(string[] components, FileStat st)
    {
        if (_options.Excludes.Count > 0 && _options.Excludes.Matches(components))
        {
            return true;
        }

        return st.Type == FileType.Regular && _options.ExcludeLargerThan is { } limit && st.Size > limit;
    }

    private bool HasMarker(byte[] dirPath)
    {
        foreach (var (name, header) in _markers)
        {
            var marker = PosixPath.Join(dirPath, PosixPath.FromString(name));
            if (!Posix.TryLStat(marker, out var st, out _) || st.Type != FileType.Regular)
            {
                continue;
            }

            if (header is null)
            {
                return true;
            }

            try
            {
                using var f = Posix.OpenRead(marker);
                var buf = new byte[header.Length];
                int n = Posix.PRead(f, buf, 0);
                if (n == buf.Length && System.Text.Encoding.ASCII.GetString(buf) == header)
                {
                    return true;
                }
            }
            catch (PosixException)
            {
            }
        }

        return false;
    }

    private async Task<Node?> SaveDirectoryAsync(byte[] path, byte[] name, FileStat st, string[] components, Node? old, ulong rootDevice, CancellationToken ct)
    {
        List<byte[]> names;
        try
        {
            names = (_options.OneFileSystem && st.Device != rootDevice) ? [] : Posix.ReadDirectory(path);
        }
        catch (PosixException e)
        {
            return Warn(path, e);
        }

        names.Sort(static (a, b) => a.AsSpan().SequenceCompareTo(b));
        List<Node>? oldChildren = old is { Type: FileType.Directory, Subtree: { } sub } ? await TryLoadTreeAsync(sub, ct).ConfigureAwait(false) : null;
        var tasks = new List<Task<Node?>>(names.Count);
        foreach (var childName in names)
        {
            var childPath = PosixPath.Join(path, childName);
            if (!Posix.TryLStat(childPath, out var cst, out int errno))
            {
                if (errno != Errno.ENOENT)
                {
                    Warn(childPath, new PosixException(errno, "lstat", childPath));
                }

                continue; // vanished since the listing
            }

            var childComponents = new string[components.Length + 1];
            components.CopyTo(childComponents, 0);
            childComponents[^1] = PosixPath.ToDisplay(childName);
            if (IsExcluded(childComponents, cst) || (cst.Type == FileType.Directory && _markers.Count > 0 && HasMarker(childPath)))
            {
                continue;
            }

            tasks.Add(SaveEntryAsync(childPath, childName, cst, childComponents, Find(oldChildren, childName), rootDevice, ct));
        }

        var nodes = (await Task.WhenAll(tasks).ConfigureAwait(false)).Where(n => n is not null).Select(n => n!).ToList();
        if (oldChildren is not null)
        {
            await CountRemovedAsync(oldChildren, nodes, ct).ConfigureAwait(false);
        }

        var subtree = await SaveTreeAsync(nodes, ct).ConfigureAwait(false);
        if (old is null)
        {
            Interlocked.Increment(ref _dirsNew);
        }
        else if (old.Subtree == subtree)
        {
            Interlocked.Increment(ref _dirsUnmodified);
        }
        else
        {
            Interlocked.Increment(ref _dirsChanged);
        }

        return MakeNode(name, path, st, subtree: subtree);
    }

    private async Task CountRemovedAsync(List<Node> oldChildren, List<Node> nodes, CancellationToken ct)
    {
        var present = new HashSet<string>(nodes.Select(n => Convert.ToHexString(n.Name)));
        foreach (var o in oldChildren)
        {
            if (!present.Contains(Convert.ToHexString(o.Name)))
            {
                Interlocked.Add(ref _filesRemoved, await CountFilesAsync(o, ct).ConfigureAwait(false));
            }
        }
    }

    private async Task<long> CountFilesAsync(Node node, CancellationToken ct)
    {
        if (node is not { Type: FileType.Directory, Subtree: { } sub })
        {
            return node.Type == FileType.Directory ? 0 : 1;
        }

        var children = await TryLoadTreeAsync(sub, ct).ConfigureAwait(false);
        long count = 0;
        foreach (var c in children ?? [])
        {
            count += await CountFilesAsync(c, ct).ConfigureAwait(false);
        }

        return count;
    }

    private async Task<ObjectId> SaveTreeAsync(List<Node> nodes, CancellationToken ct)
    {
        var bytes = TreeCodec.Encode(nodes);
        var id = _repo.Key.BlobId(bytes);
        if (_options.DryRun)
        {
            return id;
        }

        if (await _writer!.SaveAsync(BlobType.Tree, id, bytes, ct).ConfigureAwait(false))
        {
            Interlocked.Increment(ref _treeBlobs);
        }

        return id;
    }

    // ---- files --------------------------------------------------------------------------------------------------

    private async Task<Node?> SaveFileAsync(byte[] path, byte[] name, FileStat st, Node? old, CancellationToken ct)
    {
        // An empty file's content list is not encoded, so it decodes as null.
        if (old is { Type: FileType.Regular } && (old.Content ?? []) is var oldContent && old.Size == st.Size && old.ModifyTimeNs == st.ModifyTimeNs
            && old.ChangeTimeNs == st.ChangeTimeNs && old.Inode == st.Inode && oldContent.All(_repo.Index.Contains))
        {
            Interlocked.Increment(ref _filesUnmodified);
            Interlocked.Increment(ref _filesDone);
            Interlocked.Add(ref _bytesDone, st.Size);
            return MakeNode(name, path, st, content: oldContent);
        }

        await _readSlots.WaitAsync(ct).ConfigureAwait(false);
        try
        {
            var (content, stat) = await Task.Run(() => ReadFileAsync(path, st, ct), ct).ConfigureAwait(false);
            if (content is null)
            {
                return null;
            }

            Interlocked.Increment(ref old is null ? ref _filesNew : ref _filesChanged);
            Interlocked.Increment(ref _filesDone);
            return MakeNode(name, path, stat, content: content);
        }
        finally
        {
            _readSlots.Release();
        }
    }

    /// <summary>
    /// A reader's buffer: one maximum chunk of look-ahead plus 2 MiB, so each refill reads at least 2 MiB while the
    /// bytes moved to the front stay below one chunk in the common case.
    /// </summary>
    private byte[] RentReadBuffer() =>
        _readBuffers.TryTake(out var b) ? b : new byte[_repo.Chunker.Parameters.MaxSize + (2 * 1024 * 1024)];

    private async Task<(List<ObjectId>? Content, FileStat Stat)> ReadFileAsync(byte[] path, FileStat st, CancellationToken ct)
    {
        SafeFileHandle file;
        FileStat before;
        try
        {
            file = Posix.OpenRead(path);
            before = Posix.FStat(file);
            if (before.Type != FileType.Regular)
            {
                file.Dispose();
                Warn(path, new IOException($"{PosixPath.ToDisplay(path)} was replaced by a {before.Type} while the backup ran; left out"));
                return (null, st);
            }
        }
        catch (PosixException e) when (e.Errno == Errno.ENOENT)
        {
            Warn(path, new IOException($"{PosixPath.ToDisplay(path)} vanished before it could be read"), isError: false);
            return (null, st);
        }
        catch (PosixException e)
        {
            Warn(path, e);
            return (null, st);
        }

        var buffer = RentReadBuffer();
        var pending = new List<Task>();
        try
        {
            using (file)
            {
                Posix.FAdviseSequential(file);
                var content = new List<ObjectId>(Math.Max(1, (int)(before.Size / _repo.Chunker.Parameters.AverageSize) + 1));
                long offset = 0;
                int filled = 0;
                bool eof = false;
                while (true)
                {
                    while (!eof && filled < buffer.Length)
                    {
                        int n = Posix.PRead(file, buffer.AsSpan(filled), offset + filled);
                        if (n == 0)
                        {
                            eof = true;
                        }
                        else
                        {
                            filled += n;
                        }
                    }

                    int start = 0;
                    while (start < filled)
                    {
                        int cut = _repo.Chunker.FindCut(buffer.AsSpan(start, filled - start), eof);
                        if (cut <= 0)
                        {
                            break;
                        }

                        await ProcessChunkAsync(buffer, start, cut, content, pending, ct).ConfigureAwait(false);
                        Interlocked.Add(ref _bytesDone, cut);
                        start += cut;
                    }

                    if (eof && start == filled)
                    {
                        break;
                    }

                    await DrainAsync(pending, ct).ConfigureAwait(false);
                    Buffer.BlockCopy(buffer, start, buffer, 0, filled - start);
                    offset += start;
                    filled -= start;
                }

                var after = Posix.FStat(file);
                if (after.Size != before.Size || after.ModifyTimeNs != before.ModifyTimeNs || after.ChangeTimeNs != before.ChangeTimeNs)
                {
                    Warn(path, new IOException($"{PosixPath.ToDisplay(path)} changed while it was read; the next backup reads it again"), isError: false);
                }

                // Record what was read: the size is the bytes stored, the times from before the read.
                return (content, before with { Size = offset + filled });
            }
        }
        catch (PosixException e)
        {
            Warn(path, e);
            return (null, st);
        }
        finally
        {
            // The buffer goes back only when no encoder still reads from it; after a failure it is dropped instead.
            if (await TryDrainAsync(pending).ConfigureAwait(false))
            {
                _readBuffers.Add(buffer);
            }
        }
    }

    private static async Task DrainAsync(List<Task> pending, CancellationToken ct)
    {
        if (pending.Count > 0)
        {
            await Task.WhenAll(pending).WaitAsync(ct).ConfigureAwait(false);
            pending.Clear();
        }
    }

    private static async Task<bool> TryDrainAsync(List<Task> pending)
    {
        try
        {
            await Task.WhenAll(pending).ConfigureAwait(false);
            return true;
        }
        catch (Exception)
        {
            return false; // reported by the encoder that failed
        }
    }

    private async ValueTask ProcessChunkAsync(byte[] buffer, int start, int length, List<ObjectId> content, List<Task> pending, CancellationToken ct)
    {
        var id = _repo.Key.BlobId(buffer.AsSpan(start, length));
        content.Add(id);
        if (_writer!.IsKnown(id))
        {
            return;
        }

        if (_options.DryRun)
        {
            if (_dryIds.TryAdd(id, 0))
            {
                Interlocked.Add(ref _dryBytes, length);
                Interlocked.Increment(ref _dataBlobs);
            }

            return;
        }

        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        pending.Add(done.Task);
        try
        {
            await _chunks!.Writer.WriteAsync(new ChunkJob(id, buffer.AsMemory(start, length), done), ct).ConfigureAwait(false);
        }
        catch (Exception e)
        {
            done.TrySetException(e);
            throw;
        }
    }

    private readonly ConcurrentDictionary<ObjectId, byte> _dryIds = new();

    private volatile Exception? _encoderFailure;

    private async Task EncodeLoopAsync(CancellationToken ct)
    {
        try
        {
            await foreach (var job in _chunks!.Reader.ReadAllAsync(ct).ConfigureAwait(false))
            {
                try
                {
                    if (await _writer!.SaveAsync(BlobType.Data, job.Id, job.Data, ct).ConfigureAwait(false))
                    {
                        Interlocked.Increment(ref _dataBlobs);
                    }

                    job.Done.TrySetResult();
                }
                catch (Exception e)
                {
                    job.Done.TrySetException(e);
                    throw;
                }
            }
        }
        catch (Exception e)
        {
            // Stop the readers at once (they would wait forever on a channel nobody drains, or on chunks nobody
            // encodes) and keep the cause.
            _encoderFailure ??= e;
            _chunks!.Writer.TryComplete(e);
            while (_chunks.Reader.TryRead(out var left))
            {
                left.Done.TrySetException(e);
            }

            throw;
        }
    }

    // ---- metadata -----------------------------------------------------------------------------------------------

    private static Node MakeNode(byte[] name, byte[] path, FileStat st, IReadOnlyList<ObjectId>? content = null, ObjectId? subtree = null, byte[]? linkTarget = null)
    {
        bool isFile = st.Type == FileType.Regular;
        bool isDir = st.Type == FileType.Directory;
        List<Xattr>? xattrs = null;
        try
        {
            foreach (var attr in Posix.ListXattrs(path))
            {
                var value = Posix.GetXattr(path, attr);
                if (value is not null)
                {
                    (xattrs ??= []).Add(new Xattr(attr, value));
                }
            }
        }
        catch (PosixException)
        {
            // Attributes that cannot be read are left out; the entry itself is kept.
        }

        return new Node
        {
            Name = name,
            Type = st.Type,
            Mode = st.Mode,
            Uid = st.Uid,
            Gid = st.Gid,
            User = Posix.UserName(st.Uid),
            Group = Posix.GroupName(st.Gid),
            Size = isFile ? st.Size : 0,
            ModifyTimeNs = st.ModifyTimeNs,
            // Directories change atime whenever they are listed, symlinks whenever they are read, and directories
            // their ctime whenever an entry changes; storing those would make their trees new in every backup.
            AccessTimeNs = isFile ? st.AccessTimeNs : 0,
            ChangeTimeNs = isDir ? 0 : st.ChangeTimeNs,
            Inode = isDir ? 0 : st.Inode,
            DeviceId = !isDir && st.Links > 1 ? st.Device : 0,
            Links = isDir ? 0 : st.Links,
            RDev = st.Type is FileType.CharDevice or FileType.BlockDevice ? st.RDev : 0,
            Content = content,
            Subtree = subtree,
            LinkTarget = linkTarget,
            Xattrs = xattrs,
        };
    }

    // ---- scanner: totals for the progress display -----------------------------------------------------------------

    private void Scan(List<Target> targets, CancellationToken ct)
    {
        foreach (var t in targets)
        {
            ScanEntry(t.Path, t.Stat, t.Components, t.Stat.Device, ct);
        }

        _scanFinished = true;
    }

    private void ScanEntry(byte[] path, FileStat st, string[] components, ulong rootDevice, CancellationToken ct)
    {
        ct.ThrowIfCancellationRequested();
        if (st.Type == FileType.Regular)
        {
            Interlocked.Increment(ref _filesTotal);
            Interlocked.Add(ref _bytesTotal, st.Size);
            return;
        }

        if (st.Type != FileType.Directory || (_options.OneFileSystem && st.Device != rootDevice))
        {
            return;
        }

        List<byte[]> names;
        try
        {
            names = Posix.ReadDirectory(path);
        }
        catch (PosixException)
        {
            return;
        }

        foreach (var n in names)
        {
            var p = PosixPath.Join(path, n);
            if (!Posix.TryLStat(p, out var cst, out _))
            {
                continue;
            }

            var c = new string[components.Length + 1];
            components.CopyTo(c, 0);
            c[^1] = PosixPath.ToDisplay(n);
            if (IsExcluded(c, cst) || (cst.Type == FileType.Directory && _markers.Count > 0 && HasMarker(p)))
            {
                continue;
            }

            ScanEntry(p, cst, c, rootDevice, ct);
        }
    }
}
