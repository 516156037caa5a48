using System.Collections.Concurrent;
using System.Runtime.InteropServices;
using Haven.Core;
using Haven.Core.Posix;
using Haven.Files.Filters;
using Haven.Repository;
using Haven.Repository.Model;
using Microsoft.Win32.SafeHandles;

namespace Haven.Files.Restore;

public sealed record RestoreOptions
{
    public required string Target { get; init; }

    /// <summary>Only entries matching one of these (or inside a match, or a parent of a match) are restored.</summary>
    public PatternSet Includes { get; init; } = new();

    public PatternSet Excludes { get; init; } = new();

    /// <summary>Re-read every restored file and compare it with the snapshot.</summary>
    public bool Verify { get; init; }

    /// <summary>Files restored at once. Restores are I/O and decryption bound: twice the core count keeps both busy.</summary>
    public int Concurrency { get; init; } = Math.Max(2, Environment.ProcessorCount * 2);

    /// <summary>Set ownership (needs root; otherwise ownership is skipped silently).</summary>
    public bool Ownership { get; init; } = Posix.IsRoot;
}

public readonly record struct RestoreProgress(long FilesDone, long BytesDone, long FilesTotal, long BytesTotal, long FilesSkipped, long Errors, TimeSpan Elapsed);

public sealed record RestoreResult(long Files, long Directories, long Bytes, long FilesSkipped, long Verified, IReadOnlyList<string> Errors);

/// <summary>
/// Restores a snapshot's tree (or part of it) into a target directory.
/// Phases: (1) walk the trees and create directories top-down, refusing any path that would leave the target;
/// (2) write file contents in parallel, skipping all-zero 4 KiB blocks so holes stay holes, and skipping files
/// already restored intact by an earlier run (same size and mtime: the mtime is set only after the content);
/// (3) hard links, symlinks and special files; (4) metadata of directories bottom-up.
/// </summary>
public sealed class Restorer
{
    private const int HoleBlock = 4096;

    private readonly Haven.Repository.Repository _repo;
    private readonly RestoreOptions _options;
    private readonly TimeProvider _time;
    private readonly ConcurrentQueue<string> _errors = new();
    private readonly List<(byte[] Path, Node Node)> _directories = [];
    private readonly List<(byte[] Path, Node Node)> _files = [];
    private readonly List<(byte[] Path, Node Node)> _others = [];
    private readonly List<(byte[] Path, byte[] LinkTo, Node Node)> _hardLinks = [];
    private readonly Dictionary<(ulong Dev, ulong Inode), byte[]> _linkFirst = [];
    /// <summary>
    /// Shared blobs kept for reuse. 32 MiB holds 16-64 average chunks: enough for the duplicates that sit near each
    /// other in a tree (copies of a folder, zero runs); the restore of the benchmark set peaked 30 MiB lower than
    /// with 64 MiB and read no more data.
    /// </summary>
    private readonly BlobCache _cache = new(32L * 1024 * 1024);
    private readonly Dictionary<ObjectId, int> _references = [];
    private long _filesDone, _bytesDone, _bytesTotal, _skipped, _verified;
    private long _startTicks;

    public Restorer(Haven.Repository.Repository repo, RestoreOptions options, TimeProvider? time = null)
    {
        _repo = repo;
        _options = options;
        _time = time ?? repo.Time;
    }

    public RestoreProgress Progress => new(Interlocked.Read(ref _filesDone), Interlocked.Read(ref _bytesDone), _files.Count, _bytesTotal,
        Interlocked.Read(ref _skipped), _errors.Count, _time.GetElapsedTime(_startTicks));

    /// <summary>Restores the tree <paramref name="root"/>; <paramref name="subPath"/> ("/home/u") restores only that part.</summary>
    public async Task<RestoreResult> RunAsync(ObjectId root, CancellationToken ct)
    {
        _startTicks = _time.GetTimestamp();
        var target = PosixPath.FromString(Path.GetFullPath(_options.Target).TrimEnd('/') is { Length: > 0 } t ? t : "/");
        EnsureTargetDirectory(target);

        await PlanAsync(root, target, [], ct).ConfigureAwait(false);

        await Parallel.ForEachAsync(_files, new ParallelOptions { MaxDegreeOfParallelism = _options.Concurrency, CancellationToken = ct },
            async (f, token) => await RestoreFileAsync(f.Path, f.Node, token).ConfigureAwait(false)).ConfigureAwait(false);

        foreach (var (path, linkTo, node) in _hardLinks)
        {
            Try(path, () =>
            {
                RemoveExisting(path);
                Posix.Link(linkTo, path);
            });
        }

        foreach (var (path, node) in _others)
        {
            Try(path, () => CreateSpecial(path, node));
        }

        for (int i = _directories.Count - 1; i >= 0; i--)
        {
            var (path, node) = _directories[i];
            Try(path, () => ApplyMetadata(path, node));
        }

        return new RestoreResult(_files.Count, _directories.Count, Interlocked.Read(ref _bytesDone), _skipped, _verified, _errors.ToArray());
    }

    private void Try(byte[] path, Action action)
    {
        try
        {
            action();
        }
        catch (Exception e) when (e is PosixException or IOException or HavenException or Haven.Storage.StoreException)
        {
            _errors.Enqueue($"{PosixPath.ToDisplay(path)}: {e.Message}");
        }
    }

    private static void EnsureTargetDirectory(byte[] target)
    {
        if (Posix.TryLStat(target, out var st, out int errno))
        {
            if (st.Type == FileType.Directory)
            {
                return;
            }

            // A symlink to a directory as the target itself is the user's choice; follow it once.
            if (st.Type == FileType.Symlink && Directory.Exists(PosixPath.ToDisplay(target)))
            {
                return;
            }

            throw new HavenException(ErrorCode.Usage, $"the restore target {PosixPath.ToDisplay(target)} exists and is not a directory");
        }

        if (errno != Errno.ENOENT)
        {
            throw new HavenException(ErrorCode.Failed, new PosixException(errno, "lstat", target).Message);
        }

        try
        {
            Directory.CreateDirectory(PosixPath.ToDisplay(target));
        }
        catch (IOException e)
        {
            throw new HavenException(ErrorCode.Failed, $"cannot create the restore target {PosixPath.ToDisplay(target)}: {e.Message}", null, e);
        }
    }

    // ---- phase 1: plan and create directories ----------------------------------------------------------------

    private enum Selection { No, Yes, Descend }

    private Selection Select(string[] components, bool isDir)
    {
        if (_options.Excludes.Count > 0 && _options.Excludes.Matches(components))
        {
            return Selection.No;
        }

        if (_options.Includes.Count == 0 || _options.Includes.Matches(components))
        {
            return Selection.Yes;
        }

        // A directory that does not match may hold entries that do.
        return isDir ? Selection.Descend : Selection.No;
    }

    private async Task<bool> PlanAsync(ObjectId treeId, byte[] dirPath, string[] components, CancellationToken ct, bool selectedAbove = false)
    {
        var nodes = await _repo.LoadTreeAsync(treeId, ct).ConfigureAwait(false);
        bool any = false;
        foreach (var node in nodes)
        {
            // Names were validated when the tree was decoded (no '/', no "." or "..", no NUL): joining cannot escape.
            var path = PosixPath.Join(dirPath, node.Name);
            var childComponents = new string[components.Length + 1];
            components.CopyTo(childComponents, 0);
            childComponents[^1] = node.DisplayName;
            var selection = selectedAbove ? (_options.Excludes.Count > 0 && _options.Excludes.Matches(childComponents) ? Selection.No : Selection.Yes)
                : Select(childComponents, node.Type == FileType.Directory);
            if (selection == Selection.No)
            {
                continue;
            }

            switch (node.Type)
            {
                case FileType.Directory:
                    if (!CreateDirectory(path, mayReplace: selection == Selection.Yes))
                    {
                        continue;
                    }

                    int index = _directories.Count;
                    _directories.Add((path, node));
                    bool inner = node.Subtree is { } sub && await PlanAsync(sub, path, childComponents, ct, selection == Selection.Yes).ConfigureAwait(false);
                    if (selection == Selection.Descend && !inner)
                    {
                        // Nothing below matched: undo the empty directory.
                        _directories.RemoveAt(index);
                        try
                        {
                            Posix.RemoveDirectory(path);
                        }
                        catch (PosixException)
                        {
                        }

                        continue;
                    }

                    break;
                case FileType.Regular:
                    if (node.Links > 1 && node.Inode != 0)
                    {
                        var key = (node.DeviceId, node.Inode);
                        if (_linkFirst.TryGetValue(key, out var first))
                        {
                            _hardLinks.Add((path, first, node));
                            break;
                        }

                        _linkFirst[key] = path;
                    }

                    _files.Add((path, node));
                    _bytesTotal += node.Size;
                    foreach (var id in node.Content ?? [])
                    {
                        _references[id] = _references.GetValueOrDefault(id) + 1;
                    }

                    break;
                default:
                    _others.Add((path, node));
                    break;
            }

            any = true;
        }

        return any;
    }

    /// <summary>
    /// Creates a directory, or accepts an existing real one; refuses to go through a symlink. Another entry in the
    /// way is removed only when <paramref name="mayReplace"/> (the directory itself is selected): a directory
    /// entered only to look for selected entries below must not cost the user a file.
    /// </summary>
    private bool CreateDirectory(byte[] path, bool mayReplace)
    {
        if (Posix.TryLStat(path, out var st, out _))
        {
            if (st.Type == FileType.Directory)
            {
                return true;
            }

            if (st.Type == FileType.Symlink)
            {
                _errors.Enqueue($"{PosixPath.ToDisplay(path)}: refused: a symlink stands where the snapshot has a directory; restoring through it could write outside the target");
                return false;
            }

            if (!mayReplace)
            {
                _errors.Enqueue($"{PosixPath.ToDisplay(path)}: left alone: the snapshot has a directory here, the target has another entry");
                return false;
            }

            Try(path, () => Posix.Unlink(path));
        }

        try
        {
            Posix.MakeDirectory(path, 0700);
            return true;
        }
        catch (PosixException e)
        {
            _errors.Enqueue(e.Message);
            return false;
        }
    }

    private static void RemoveExisting(byte[] path)
    {
        if (Posix.TryLStat(path, out var st, out _))
        {
            if (st.Type == FileType.Directory)
            {
                throw new IOException($"{PosixPath.ToDisplay(path)} is a directory in the target but not in the snapshot; left in place");
            }

            Posix.Unlink(path);
        }
    }

    // ---- phase 2: file contents -----------------------------------------------------------------------------------

    private async Task RestoreFileAsync(byte[] path, Node node, CancellationToken ct)
    {
        try
        {
            if (Posix.TryLStat(path, out var existing, out _) && existing.Type == FileType.Regular && existing.Links == 1
                && existing.Size == node.Size && existing.ModifyTimeNs == node.ModifyTimeNs && !_options.Verify)
            {
                Interlocked.Increment(ref _skipped);
                Interlocked.Increment(ref _filesDone);
                Interlocked.Add(ref _bytesDone, node.Size);
                return;
            }

            // Never write into what is there: it may be a hard link shared with another file (even one outside
            // the target) or a read-only file; a fresh file also keeps unwritten ranges as holes.
            if (existing.Type != FileType.Unknown)
            {
                RemoveExisting(path);
            }

            using (var file = Posix.CreateFile(path, 0600, truncate: true))
            {
                long offset = 0;
                foreach (var id in node.Content ?? [])
                {
                    int length;
                    if (_references[id] > 1)
                    {
                        var data = await ReadSharedBlobAsync(id, ct).ConfigureAwait(false);
                        WriteSkippingZeros(file, data, offset);
                        length = data.Length;
                    }
                    else
                    {
                        var (buffer, n) = await _repo.ReadBlobPooledAsync(id, ct).ConfigureAwait(false);
                        try
                        {
                            WriteSkippingZeros(file, buffer.AsSpan(0, n), offset);
                        }
                        finally
                        {
                            BufferPool.Large.Return(buffer);
                        }

                        length = n;
                    }

                    offset += length;
                    Interlocked.Add(ref _bytesDone, length);
                }

                if (offset != node.Size)
                {
                    _errors.Enqueue($"{PosixPath.ToDisplay(path)}: the snapshot's content has {offset} bytes, its metadata says {node.Size}");
                }

                Posix.FTruncate(file, offset);
            }

            if (_options.Verify)
            {
                await VerifyAsync(path, node, ct).ConfigureAwait(false);
            }

            ApplyMetadata(path, node);
            Interlocked.Increment(ref _filesDone);
        }
        catch (Exception e) when (e is PosixException or IOException or HavenException)
        {
            _errors.Enqueue($"{PosixPath.ToDisplay(path)}: {e.Message}");
        }
    }

    /// <summary>Blobs several files share (duplicates, zero runs) are kept for a while instead of read again.</summary>
    private async ValueTask<byte[]> ReadSharedBlobAsync(ObjectId id, CancellationToken ct)
    {
        if (_cache.TryGet(id, out var cached))
        {
            return cached;
        }

        var data = await _repo.ReadBlobAsync(id, ct).ConfigureAwait(false);
        _cache.Add(id, data);
        return data;
    }

    /// <summary>
    /// Writes <paramref name="data"/> at <paramref name="offset"/> into a file that was just truncated, leaving out
    /// every all-zero piece between 4 KiB boundaries of the file: unwritten ranges read as zeros, and whole blocks
    /// never written stay holes, wherever the chunk boundaries fall.
    /// </summary>
    private static void WriteSkippingZeros(SafeFileHandle file, ReadOnlySpan<byte> data, long offset)
    {
        int pos = 0;
        int runStart = -1;
        while (pos < data.Length)
        {
            int end = (int)Math.Min(data.Length, pos + (HoleBlock - ((offset + pos) % HoleBlock)));
            bool zero = !data[pos..end].ContainsAnyExcept((byte)0);
            if (zero && runStart >= 0)
            {
                Posix.PWriteAll(file, data[runStart..pos], offset + runStart);
                runStart = -1;
            }
            else if (!zero && runStart < 0)
            {
                runStart = pos;
            }

            pos = end;
        }

        if (runStart >= 0)
        {
            Posix.PWriteAll(file, data[runStart..], offset + runStart);
        }
    }

    private async Task VerifyAsync(byte[] path, Node node, CancellationToken ct)
    {
        using var file = Posix.OpenRead(path);
        long offset = 0;
        foreach (var id in node.Content ?? [])
        {
            if (!_repo.TryLocate(id, out var location))
            {
                throw new HavenException(ErrorCode.Corrupt, $"blob {id.Short} is not in the index");
            }

            var buffer = new byte[location.Blob.RawLength];
            int read = 0;
            while (read < buffer.Length)
            {
                int n = Posix.PRead(file, buffer.AsSpan(read), offset + read);
                if (n == 0)
                {
                    break;
                }

                read += n;
            }

            if (read != buffer.Length || _repo.Key.BlobId(buffer) != id)
            {
                throw new HavenException(ErrorCode.Corrupt, $"verification failed: the bytes at offset {offset} differ from the snapshot");
            }

            offset += read;
        }

        await Task.CompletedTask.ConfigureAwait(false);
        Interlocked.Increment(ref _verified);
    }

    // ---- phase 3: links and special files -------------------------------------------------------------------------

    private void CreateSpecial(byte[] path, Node node)
    {
        RemoveExisting(path);
        switch (node.Type)
        {
            case FileType.Symlink:
                Posix.Symlink(node.LinkTarget ?? [], path);
                break;
            case FileType.Fifo:
            case FileType.Socket:
                Posix.MakeNode(path, node.Type, 0600, 0);
                break;
            case FileType.CharDevice:
            case FileType.BlockDevice:
                if (!Posix.IsRoot)
                {
                    throw new IOException("device nodes can only be restored as root");
                }

                Posix.MakeNode(path, node.Type, 0600, node.RDev);
                break;
            default:
                throw new IOException($"entries of type {node.Type} cannot be restored");
        }

        ApplyMetadata(path, node);
    }

    // ---- metadata -----------------------------------------------------------------------------------------------

    private void ApplyMetadata(byte[] path, Node node)
    {
        if (_options.Ownership)
        {
            Posix.LChown(path, node.Uid, node.Gid);
        }

        if (node.Type != FileType.Symlink)
        {
            // After chown, which clears setuid and setgid.
            Posix.Chmod(path, node.Mode);
        }

        if (node.Xattrs is not null)
        {
            foreach (var x in node.Xattrs)
            {
                try
                {
                    Posix.SetXattr(path, x.Name, x.Value);
                }
                catch (PosixException e)
                {
                    _errors.Enqueue($"{PosixPath.ToDisplay(path)}: extended attribute {PosixPath.ToDisplay(x.Name)}: {e.Message}");
                }
            }
        }

        Posix.SetTimes(path, node.AccessTimeNs != 0 ? node.AccessTimeNs : node.ModifyTimeNs, node.ModifyTimeNs);
    }
}

/// <summary>A small, thread-safe cache of decoded blobs, for content shared between files (bounded by bytes).</summary>
internal sealed class BlobCache(long capacity)
{
    private readonly ConcurrentDictionary<ObjectId, byte[]> _items = new();
    private readonly ConcurrentQueue<ObjectId> _order = new();
    private long _size;

    public bool TryGet(ObjectId id, out byte[] data) => _items.TryGetValue(id, out data!);

    public void Add(ObjectId id, byte[] data)
    {
        if (data.Length > capacity / 8 || !_items.TryAdd(id, data))
        {
            return;
        }

        _order.Enqueue(id);
        if (Interlocked.Add(ref _size, data.Length) > capacity)
        {
            while (Interlocked.Read(ref _size) > capacity && _order.TryDequeue(out var old))
            {
                if (_items.TryRemove(old, out var removed))
                {
                    Interlocked.Add(ref _size, -removed.Length);
                }
            }
        }
    }
}
