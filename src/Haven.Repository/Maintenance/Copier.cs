using System.Collections.Concurrent;
using Haven.Core;
using Haven.Core.Posix;
using Haven.Repository.Model;

namespace Haven.Repository.Maintenance;

/// <summary>Tuning of <see cref="Copier"/>.</summary>
public sealed record CopyOptions
{
    /// <summary>Blobs read from the source at once (each holds up to one chunk in memory, 8 MiB at most by default).</summary>
    public int ReadConcurrency { get; init; } = 8;

    public BlobWriterOptions? Writer { get; init; }
}

/// <summary>What happened to one source snapshot.</summary>
/// <param name="Source">The snapshot's id in the source repository.</param>
/// <param name="Destination">Its new id in the destination, or the id of the copy found there when skipped.</param>
/// <param name="Skipped">True when the destination already had a copy.</param>
public sealed record CopiedSnapshot(ObjectId Source, Snapshot Snapshot, ObjectId? Destination, bool Skipped);

/// <summary>Counters of a running copy, read from any thread.</summary>
public readonly record struct CopyProgress(int SnapshotsDone, int SnapshotsTotal, long TreesDone, long BlobsRead, long BlobsCopied, long BytesCopied);

/// <summary>What a copy did.</summary>
/// <param name="DataBlobsCopied">Data blobs stored in the destination (those it lacked).</param>
/// <param name="TreeBlobsCopied">Tree blobs stored in the destination.</param>
/// <param name="BytesCopied">Plaintext bytes of the blobs stored.</param>
/// <param name="BytesStored">What they take in the destination's packs (compressed and encrypted).</param>
/// <param name="TreesRead">Tree blobs read from the source (every tree of the copied snapshots, once).</param>
/// <param name="DataBlobsRead">Data blobs read from the source: those the destination lacked, or whose destination id was not known.</param>
/// <param name="SameIdKey">The repositories share the id key, so blob and tree ids are the same in both.</param>
public sealed record CopyResult(
    int SnapshotsCopied,
    int SnapshotsSkipped,
    long DataBlobsCopied,
    long TreeBlobsCopied,
    long BytesCopied,
    long BytesStored,
    long TreesRead,
    long DataBlobsRead,
    bool SameIdKey,
    IReadOnlyList<CopiedSnapshot> Snapshots);

/// <summary>
/// <c>copy</c>: copies snapshots from one repository to another, storing only the blobs the destination lacks.
/// <para>
/// Blob ids are HMAC-SHA256 under each repository's own id key (format §7), so in general a blob has a different id in
/// the destination: every data blob is read from the source, its destination id computed with the destination's key,
/// and stored unless the destination has it (the <see cref="BlobWriter"/> checks); every tree is rewritten with the
/// destination ids of its content and subtrees, which gives the tree a new id too. Source ids map to destination ids
/// in memos, so a blob or subtree shared by many files or snapshots is handled once per run.
/// </para>
/// <para>
/// When both repositories have the same id key (the same master key, e.g. a copy of the repository), ids are equal:
/// trees are stored byte for byte, and a data blob the destination already has is not even read.
/// </para>
/// <para>
/// With different keys, reading every data blob of every snapshot would make each daily copy read the whole source.
/// So before copying a snapshot whose parent was copied earlier, the parent's source tree and the tree of its copy are
/// walked side by side (matched by name, type, size and number of chunks): the i-th chunk of a file in one is the i-th
/// in the other, which maps source ids to destination ids without reading data. Only mappings to blobs the destination's
/// index has are used; files that changed since the parent are read as usual.
/// </para>
/// <para>
/// A snapshot is skipped when the destination has one with the same persistent id (its <c>original</c>, or its own id
/// for a snapshot that has none) and the same time, host, user, paths and tags (and, with a shared id key, tree). Copies
/// record the source's persistent id in <c>original</c>, and their parent is the destination copy of the source parent
/// when there is one. The writer is flushed before each snapshot is saved, so a visible snapshot is complete; an
/// interrupted copy leaves blobs that the next run finds and does not send again.
/// </para>
/// An instance runs once. The caller holds shared locks on both repositories and has loaded both indexes.
/// Not kept: tree fields unknown to this build are dropped when a tree is rewritten (different keys only).
/// </summary>
public sealed class Copier
{
    private readonly Repository _source;
    private readonly Repository _destination;
    private readonly CopyOptions _options;
    private readonly bool _sameKey;
    private readonly SemaphoreSlim _reads;
    private readonly ConcurrentDictionary<ObjectId, Lazy<Task<ObjectId>>> _trees = new();
    private readonly ConcurrentDictionary<ObjectId, Lazy<Task<ObjectId>>> _data = new();
    private readonly ConcurrentDictionary<ObjectId, ObjectId> _seeded = new();
    private readonly HashSet<(ObjectId, ObjectId)> _seededTrees = [];
    private BlobWriter? _writer;
    private CancellationToken _ct;
    private int _snapshotsDone;
    private int _snapshotsTotal;
    private long _treesDone;
    private long _treesRead;
    private long _dataRead;
    private long _dataBlobsStored;
    private long _treeBlobsStored;

    public Copier(Repository source, Repository destination, CopyOptions? options = null)
    {
        _source = source;
        _destination = destination;
        _options = options ?? new CopyOptions();
        _sameKey = source.Key.IdKey.AsSpan().SequenceEqual(destination.Key.IdKey);
        _reads = new SemaphoreSlim(Math.Max(1, _options.ReadConcurrency));
    }

    /// <summary>True when both repositories share the id key (ids are equal, trees are copied unchanged).</summary>
    public bool SameIdKey => _sameKey;

    /// <summary>Called after each snapshot is copied or skipped (from the calling task).</summary>
    public Action<CopiedSnapshot>? OnSnapshot { get; init; }

    /// <summary>Called before each snapshot is saved; the CLI checks there that its lock is still valid (it throws if not).</summary>
    public Action? BeforeCommit { get; init; }

    public CopyProgress Progress => new(
        Volatile.Read(ref _snapshotsDone), Volatile.Read(ref _snapshotsTotal), Interlocked.Read(ref _treesDone), Interlocked.Read(ref _treesRead) + Interlocked.Read(ref _dataRead),
        _writer?.BlobsAdded ?? 0, _writer?.BytesAdded ?? 0);

    /// <summary>Copies <paramref name="snapshots"/> (of the source), oldest first.</summary>
    public async Task<CopyResult> RunAsync(IReadOnlyList<(ObjectId Id, Snapshot Snapshot)> snapshots, CancellationToken ct)
    {
        _ct = ct;
        _snapshotsTotal = snapshots.Count;
        var existing = new Dictionary<ObjectId, List<(ObjectId Id, Snapshot Snapshot)>>();
        foreach (var (id, s) in await _destination.LoadSnapshotsAsync(ct, onDamaged: (_, _) => { }).ConfigureAwait(false))
        {
            AddExisting(existing, id, s);
        }

        var outcomes = new List<CopiedSnapshot>();
        _writer = new BlobWriter(_destination, _options.Writer);
        try
        {
            foreach (var (id, snapshot) in snapshots.OrderBy(s => s.Snapshot.Time).ThenBy(s => s.Id))
            {
                ct.ThrowIfCancellationRequested();
                CopiedSnapshot outcome;
                if (FindCopy(existing, id, snapshot) is { } copy)
                {
                    outcome = new CopiedSnapshot(id, snapshot, copy.Id, Skipped: true);
                }
                else
                {
                    if (!_sameKey)
                    {
                        await SeedFromParentAsync(snapshot, existing).ConfigureAwait(false);
                    }

                    var tree = await CopyTreeAsync(snapshot.TreeId).ConfigureAwait(false);
                    await _writer.FlushAsync(ct).ConfigureAwait(false);
                    var parentCopy = await FindParentCopyAsync(snapshot, existing).ConfigureAwait(false);
                    var copied = snapshot with
                    {
                        Tree = tree.ToString(),
                        Parent = parentCopy?.ToString(),
                        Original = snapshot.Original ?? id.ToString(),
                    };
                    BeforeCommit?.Invoke();
                    var newId = await _destination.SaveSnapshotAsync(copied, ct).ConfigureAwait(false);
                    AddExisting(existing, newId, copied);
                    outcome = new CopiedSnapshot(id, snapshot, newId, Skipped: false);
                }

                outcomes.Add(outcome);
                Interlocked.Increment(ref _snapshotsDone);
                OnSnapshot?.Invoke(outcome);
            }

            await _writer.FlushAsync(ct).ConfigureAwait(false);
        }
        finally
        {
            await _writer.DisposeAsync().ConfigureAwait(false);
        }

        return new CopyResult(
            outcomes.Count(o => !o.Skipped), outcomes.Count(o => o.Skipped), Interlocked.Read(ref _dataBlobsStored), Interlocked.Read(ref _treeBlobsStored),
            _writer.BytesAdded, _writer.BytesStored, Interlocked.Read(ref _treesRead), Interlocked.Read(ref _dataRead), _sameKey, outcomes);
    }

    // ---- which snapshots the destination already has ----------------------------------------------------------

    private static ObjectId PersistentId(ObjectId id, Snapshot s) => s.Original is { } o && ObjectId.TryParse(o, out var original) ? original : id;

    private static void AddExisting(Dictionary<ObjectId, List<(ObjectId, Snapshot)>> existing, ObjectId id, Snapshot s)
    {
        Add(id);
        var persistent = PersistentId(id, s);
        if (persistent != id)
        {
            Add(persistent);
        }

        void Add(ObjectId key)
        {
            if (!existing.TryGetValue(key, out var list))
            {
                existing[key] = list = [];
            }

            list.Add((id, s));
        }
    }

    private (ObjectId Id, Snapshot Snapshot)? FindCopy(Dictionary<ObjectId, List<(ObjectId Id, Snapshot Snapshot)>> existing, ObjectId id, Snapshot s)
    {
        foreach (var key in new[] { PersistentId(id, s), id })
        {
            if (existing.TryGetValue(key, out var candidates))
            {
                foreach (var c in candidates)
                {
                    if (c.Id == id || Similar(c.Snapshot, s))
                    {
                        return c;
                    }
                }
            }
        }

        return null;
    }

    /// <summary>
    /// Same time, host, user, paths and tags; and the same tree when ids are comparable. A snapshot repaired since it was
    /// copied has a new tag and a new tree, so it is copied again (as restic does).
    /// </summary>
    private bool Similar(Snapshot a, Snapshot b) =>
        a.Time == b.Time && a.Hostname == b.Hostname && a.Username == b.Username
        && a.Paths.SequenceEqual(b.Paths) && a.Tags.SequenceEqual(b.Tags)
        && (!_sameKey || a.Tree == b.Tree);

    private async Task<ObjectId?> FindParentCopyAsync(Snapshot snapshot, Dictionary<ObjectId, List<(ObjectId Id, Snapshot Snapshot)>> existing)
    {
        if (await LoadParentAsync(snapshot).ConfigureAwait(false) is not { } parent)
        {
            return null;
        }

        return FindCopy(existing, parent.Id, parent.Snapshot)?.Id;
    }

    private async Task<(ObjectId Id, Snapshot Snapshot)?> LoadParentAsync(Snapshot snapshot)
    {
        if (snapshot.Parent is not { } p || !ObjectId.TryParse(p, out var parentId))
        {
            return null;
        }

        try
        {
            return (parentId, await _source.LoadSnapshotAsync(parentId, _ct).ConfigureAwait(false));
        }
        catch (HavenException e) when (e.Code is ErrorCode.NotFound or ErrorCode.Corrupt or ErrorCode.UnsupportedFormat)
        {
            return null; // forgotten or damaged: the copy just has no parent and nothing is seeded
        }
    }

    // ---- seeding the id map from an earlier copy --------------------------------------------------------------

    private async Task SeedFromParentAsync(Snapshot snapshot, Dictionary<ObjectId, List<(ObjectId Id, Snapshot Snapshot)>> existing)
    {
        if (await LoadParentAsync(snapshot).ConfigureAwait(false) is not { } parent
            || FindCopy(existing, parent.Id, parent.Snapshot) is not { } copy)
        {
            return;
        }

        // A parent copied in this run is in the memos already.
        if (_trees.ContainsKey(parent.Snapshot.TreeId))
        {
            return;
        }

        await SeedAsync(parent.Snapshot.TreeId, copy.Snapshot.TreeId).ConfigureAwait(false);
    }

    /// <summary>Maps the data of <paramref name="sourceTree"/> to that of <paramref name="destinationTree"/>, its copy.</summary>
    private async Task SeedAsync(ObjectId sourceTree, ObjectId destinationTree)
    {
        if (!_seededTrees.Add((sourceTree, destinationTree)))
        {
            return;
        }

        List<Node> src, dst;
        try
        {
            src = await _source.LoadTreeAsync(sourceTree, _ct).ConfigureAwait(false);
            dst = await _destination.LoadTreeAsync(destinationTree, _ct).ConfigureAwait(false);
        }
        catch (HavenException e) when (e.Code == ErrorCode.Corrupt)
        {
            return; // a damaged tree only costs speed: the copy reads those files
        }

        int i = 0, j = 0;
        while (i < src.Count && j < dst.Count)
        {
            var a = src[i];
            var b = dst[j];
            int order = a.Name.AsSpan().SequenceCompareTo(b.Name);
            if (order != 0)
            {
                if (order < 0) i++; else j++;
                continue;
            }

            i++;
            j++;
            if (a.Type != b.Type || a.Size != b.Size)
            {
                continue;
            }

            if (a.Type == FileType.Directory && a.Subtree is { } sa && b.Subtree is { } sb)
            {
                await SeedAsync(sa, sb).ConfigureAwait(false);
            }
            else if (a.Content is { } ca && b.Content is { } cb && ca.Count == cb.Count)
            {
                for (int k = 0; k < ca.Count; k++)
                {
                    if (_destination.Index.TryGet(cb[k], out var location) && location.Blob.Type == BlobType.Data)
                    {
                        _seeded.TryAdd(ca[k], cb[k]);
                    }
                }
            }
        }
    }

    // ---- copying trees and blobs ------------------------------------------------------------------------------

    private Task<ObjectId> CopyTreeAsync(ObjectId id) =>
        _trees.GetOrAdd(id, key => new Lazy<Task<ObjectId>>(() => CopyTreeCoreAsync(key))).Value;

    private Task<ObjectId> CopyDataAsync(ObjectId id) =>
        _data.GetOrAdd(id, key => new Lazy<Task<ObjectId>>(() => CopyDataCoreAsync(key))).Value;

    private async Task<ObjectId> CopyTreeCoreAsync(ObjectId id)
    {
        var bytes = await ReadAsync(id, tree: true).ConfigureAwait(false);
        List<Node> nodes;
        try
        {
            nodes = TreeCodec.Decode(bytes);
        }
        catch (MalformedDataException e)
        {
            throw new HavenException(ErrorCode.Corrupt, $"tree {id.Short} of {_source.Location} is damaged: {e.Message}", "run 'haven check' on the source repository");
        }

        var rewritten = new Task<Node>[nodes.Count];
        for (int i = 0; i < nodes.Count; i++)
        {
            rewritten[i] = CopyNodeAsync(nodes[i]);
        }

        await Task.WhenAll(rewritten).ConfigureAwait(false);
        ObjectId newId = id;
        if (!_sameKey)
        {
            bytes = TreeCodec.Encode(rewritten.Select(t => t.Result).ToList());
            newId = _destination.Key.BlobId(bytes);
        }

        if (await _writer!.SaveAsync(BlobType.Tree, newId, bytes, _ct).ConfigureAwait(false))
        {
            Interlocked.Increment(ref _treeBlobsStored);
        }

        Interlocked.Increment(ref _treesDone);
        return newId;
    }

    private async Task<Node> CopyNodeAsync(Node node)
    {
        if (node.Type == FileType.Directory && node.Subtree is { } sub)
        {
            var newSub = await CopyTreeAsync(sub).ConfigureAwait(false);
            return newSub == sub ? node : node.With(subtree: newSub);
        }

        if (node.Content is { Count: > 0 } content)
        {
            var ids = await Task.WhenAll(content.Select(CopyDataAsync)).ConfigureAwait(false);
            return _sameKey ? node : node.With(content: ids);
        }

        return node;
    }

    private async Task<ObjectId> CopyDataCoreAsync(ObjectId id)
    {
        if (_sameKey)
        {
            if (_writer!.IsKnown(id))
            {
                return id; // the same id means the same content: nothing to read
            }
        }
        else if (_seeded.TryGetValue(id, out var mapped))
        {
            return mapped;
        }

        var plain = await ReadAsync(id, tree: false).ConfigureAwait(false);
        var newId = _sameKey ? id : _destination.Key.BlobId(plain);
        if (await _writer!.SaveAsync(BlobType.Data, newId, plain, _ct).ConfigureAwait(false))
        {
            Interlocked.Increment(ref _dataBlobsStored);
        }

        return newId;
    }

    private async Task<byte[]> ReadAsync(ObjectId id, bool tree)
    {
        await _reads.WaitAsync(_ct).ConfigureAwait(false);
        try
        {
            var bytes = await _source.ReadBlobAsync(id, _ct).ConfigureAwait(false);
            Interlocked.Increment(ref tree ? ref _treesRead : ref _dataRead);
            return bytes;
        }
        finally
        {
            _reads.Release();
        }
    }
}
