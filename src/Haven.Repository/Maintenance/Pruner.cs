using System.Collections.Concurrent;
using System.Globalization;
using System.Threading.Channels;
using Haven.Core;
using Haven.Repository.Index;
using Haven.Repository.Model;
using Haven.Repository.Packs;
using Haven.Storage;

namespace Haven.Repository.Maintenance;

/// <summary>
/// How many bytes of unused blobs may stay in packs that prune keeps: a share of the total, an absolute size, or
/// unlimited (only packs without any used blob are deleted; nothing is repacked). <c>default</c> is unlimited.
/// </summary>
public readonly record struct UnusedLimit
{
    private UnusedLimit(double? percent, long? bytes)
    {
        Percent = percent;
        Bytes = bytes;
    }

    /// <summary>Unused bytes may be at most this share (0 … 100) of what prune leaves behind.</summary>
    public double? Percent { get; }

    public long? Bytes { get; }

    public bool IsUnlimited => Percent is null && Bytes is null;

    public static UnusedLimit Unlimited => default;

    public static UnusedLimit FromPercent(double percent)
    {
        if (double.IsNaN(percent) || percent < 0 || percent > 100)
        {
            throw new ArgumentOutOfRangeException(nameof(percent), percent, "a share of unused space is between 0 and 100 percent");
        }

        return percent >= 100 ? Unlimited : new UnusedLimit(percent, null);
    }

    public static UnusedLimit FromBytes(long bytes)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(bytes);
        return new UnusedLimit(null, bytes);
    }

    /// <summary>
    /// The unused bytes allowed next to <paramref name="usedBytes"/> of used ones. For p percent that is
    /// u ≤ p/(100-p) · used, i.e. unused is at most p % of used + unused (restic's definition, so that
    /// "--max-unused 5%" means the same in both).
    /// </summary>
    public long AllowedFor(long usedBytes)
    {
        if (Bytes is { } b)
        {
            return b;
        }

        if (Percent is not { } p)
        {
            return long.MaxValue;
        }

        double allowed = usedBytes * p / (100 - p);
        return allowed >= long.MaxValue ? long.MaxValue : (long)allowed;
    }

    public override string ToString() =>
        Bytes is { } b ? $"{b} bytes" : Percent is { } p ? p.ToString("0.##", CultureInfo.InvariantCulture) + "%" : "unlimited";
}

/// <summary>Choices for <see cref="Pruner"/>.</summary>
public sealed record PruneOptions
{
    /// <summary>Unused space tolerated in kept packs; more is reclaimed by repacking. restic's default, 5 %.</summary>
    public UnusedLimit MaxUnused { get; init; } = UnusedLimit.FromPercent(5);

    /// <summary>At most this many bytes of packs are repacked (read and written again) in one run; null: no limit.</summary>
    public long? MaxRepackSize { get; init; }

    /// <summary>Also repack packs smaller than a quarter of the target pack size together (when there are two or more).</summary>
    public bool RepackSmall { get; init; }

    /// <summary>Plan only: read the index and the trees, change nothing.</summary>
    public bool DryRun { get; init; }

    /// <summary>
    /// Snapshots to treat as already removed. <c>forget --dry-run --prune</c> uses it to show what prune would do
    /// once the snapshots are gone, without removing them.
    /// </summary>
    public IReadOnlySet<ObjectId> IgnoreSnapshots { get; init; } = new HashSet<ObjectId>();

    /// <summary>
    /// Blobs per new index file. 50 000 entries are about 4 MB of plaintext: small enough that a reader never holds
    /// a huge file in memory, large enough that a multi-TiB repository has a few hundred index files, not millions.
    /// </summary>
    public int MaxBlobsPerIndex { get; init; } = IndexFile.DefaultMaxBlobsPerFile;

    /// <summary>Tree loads and deletes in flight. Latency-bound requests: eight keep S3 busy without throttling.</summary>
    public int Concurrency { get; init; } = 8;

    /// <summary>Packs downloaded at once for repacking (each is up to a pack's size in memory, plus two queued).</summary>
    public int RepackReadConcurrency { get; init; } = 2;

    /// <summary>Write an index file for repacked packs after this many (as the format asks of every writer).</summary>
    public int PacksPerIndex { get; init; } = 8;
}

/// <summary>The steps of a prune, in order.</summary>
public enum PrunePhase
{
    LoadingIndex,
    Marking,
    Planning,
    Repacking,
    WritingIndex,
    DeletingIndexFiles,
    DeletingPacks,
    Done,
}

/// <summary>Where a prune is. <see cref="Total"/> is 0 when not known (marking discovers trees as it goes).</summary>
public readonly record struct PruneProgress(PrunePhase Phase, long Done, long Total);

/// <summary>What prune found and decided, before it changes anything. Sizes are stored (compressed, encrypted) bytes.</summary>
public sealed record PrunePlan
{
    public int Snapshots { get; init; }

    /// <summary>Every pack in the store, and their total size.</summary>
    public int PacksTotal { get; init; }

    public long BytesTotal { get; init; }

    public long UsedBlobs { get; init; }

    public long UsedBytes { get; init; }

    /// <summary>Index entries no snapshot needs, including extra copies of duplicated blobs.</summary>
    public long UnusedBlobs { get; init; }

    public long UnusedBytes { get; init; }

    /// <summary>Extra copies of used blobs (counted in <see cref="UnusedBlobs"/>).</summary>
    public long DuplicateBlobs { get; init; }

    /// <summary>Indexed packs without any used blob: deleted.</summary>
    public int PacksToDelete { get; init; }

    public long BytesToDelete { get; init; }

    /// <summary>Packs no index names (left by interrupted backups): deleted.</summary>
    public int UnindexedPacks { get; init; }

    public long UnindexedBytes { get; init; }

    /// <summary>Packs whose used blobs are copied into new packs, after which they are deleted.</summary>
    public int PacksToRepack { get; init; }

    public long BytesToRepack { get; init; }

    /// <summary>Bytes of used blobs that repacking writes again.</summary>
    public long RepackUsedBytes { get; init; }

    public int PacksToKeep { get; init; }

    /// <summary>Unused bytes left in kept packs after the prune.</summary>
    public long UnusedAfter { get; init; }

    /// <summary>Index entries that disappear: every entry of deleted packs and the unused entries of repacked ones.</summary>
    public long BlobsToRemove { get; init; }

    /// <summary>Index files the prune replaces (0 when the index need not change).</summary>
    public int IndexFilesToReplace { get; init; }

    public bool NothingToDo => PacksToDelete == 0 && UnindexedPacks == 0 && PacksToRepack == 0;
}

/// <summary>What a prune did. In a dry run only <see cref="Plan"/> is filled in.</summary>
public sealed record PruneResult(PrunePlan Plan)
{
    public bool DryRun { get; init; }

    /// <summary>Pack files deleted: unused, repacked and unindexed ones.</summary>
    public int PacksDeleted { get; init; }

    public int PacksRepacked { get; init; }

    public int PacksWritten { get; init; }

    /// <summary>Bytes of deleted packs minus bytes of the packs written by repacking.</summary>
    public long BytesFreed { get; init; }

    public long BlobsRemoved { get; init; }

    public long BytesStillUnused { get; init; }

    public int IndexFilesWritten { get; init; }

    public int IndexFilesDeleted { get; init; }
}

/// <summary>
/// Removes data no snapshot needs (restic's <c>prune</c>). The caller holds an <b>exclusive</b> lock for the whole run
/// (a dry run may make do with a shared one); <see cref="RunAsync"/> checks that the lock is still valid before each
/// destructive step, so a prune whose machine slept past the lock's expiry stops instead of deleting.
/// <para>
/// Steps: (1) read every index file and list every pack with its size; any damaged index file, indexed pack that is
/// missing, or pack shorter than its index entries stops the prune. (2) Mark: walk the trees of every snapshot (level
/// by level, in parallel, each tree once) and collect the used tree and data blobs. A snapshot that cannot be read, a
/// tree that cannot be loaded or decoded, or a used blob that no index knows stops the prune with
/// <see cref="ErrorCode.Corrupt"/> before anything is written: deleting on an incomplete mark would delete data a
/// snapshot needs (a lost index file, for instance, makes its packs look like garbage). (3) Plan: keep one copy of
/// each used blob (in the fullest pack that has one); packs with no kept blob are deleted, packs no index names are
/// deleted, partly used packs are repacked, most wasteful first, until the unused bytes left fit
/// <see cref="PruneOptions.MaxUnused"/> or <see cref="PruneOptions.MaxRepackSize"/> is spent; with
/// <see cref="PruneOptions.RepackSmall"/>, small packs are merged too. (4) Execute, in this order:
/// </para>
/// <list type="number">
/// <item>Repack: read each repacked pack's used blobs, verify them (authentication and id), copy their stored bytes
/// into new packs, upload those, and write index files for them (every <see cref="PruneOptions.PacksPerIndex"/> packs).</item>
/// <item>Write the new index: every retained pack (kept and new) in files of at most
/// <see cref="PruneOptions.MaxBlobsPerIndex"/> blobs. Only the <em>last</em> file lists, in <c>supersedes</c>, every
/// index file that was in the store (also ones already superseded) and the repack index files.</item>
/// <item>Delete the superseded index files.</item>
/// <item>Delete the packs: unused, repacked and unindexed ones.</item>
/// </list>
/// <para>
/// <b>Why a crash (kill -9, power cut, a failed request) at any point is safe.</b> The invariant is that every blob of
/// every snapshot is, at every moment, in a pack that exists and that a non-superseded index file names. Before step
/// 2 completes the last new index file, the old index files are all live and name every old pack, and no pack has
/// been deleted; the new packs are either named by repack index files (duplicates of blobs the old packs still hold:
/// readers keep one location, the next prune drops the extra copy) or by none (unreferenced packs, a note in
/// <c>check</c>, deleted by the next prune). New index files 1 … k-1 carry no supersedes list, so on their own they
/// only add duplicate entries. The moment file k is stored, readers switch atomically from the old files to the new
/// set, which names every retained pack, and every retained pack still exists. From then on, only files no live
/// index names are deleted: superseded index files (readers ignore them, present or not) and packs the new index
/// leaves out (unreferenced until deleted). Listing <em>every</em> old index file in <c>supersedes</c> matters: an
/// index file superseded only by a file this prune deletes would otherwise come back to life and name packs deleted
/// long ago. Snapshots are never touched (<c>forget</c> removes them before prune runs), so no snapshot loses data,
/// and a second prune after a crash finishes the work. Every step is idempotent: files are write-once under
/// content-derived names and deleting a missing file succeeds.
/// </para>
/// <para>
/// <b>Locks.</b> The format (§11) lets prune delete only packs older than the oldest lock it saw, so that data of a
/// backup that started after prune listed the locks is safe. Holding the exclusive lock makes that rule vacuous:
/// any non-stale lock conflicts with it, so no writer was active when the lock was taken and none can start until
/// it is released; unindexed packs are therefore garbage of writers that are gone. The accepted failure mode is the
/// one §11 documents: a backup paused for longer than a lock's lifetime (30 minutes without refresh) is not protected;
/// if it wakes up after prune deleted its unindexed packs, it aborts before committing its snapshot (it checks its
/// lock), and at worst leaves an index file naming a missing pack, which <c>check</c> reports and
/// <c>repair index</c> removes.
/// </para>
/// Not thread-safe: one run per instance. <see cref="OnProgress"/> is called from worker threads, possibly at once.
/// The repository's loaded index is reloaded at the end of a run that changed something.
/// </summary>
public sealed class Pruner
{
    private readonly Repository _repo;
    private readonly PruneOptions _options;

    public Pruner(Repository repo, PruneOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(repo);
        _repo = repo;
        _options = options ?? new PruneOptions();
        if (_options.MaxBlobsPerIndex < 1 || _options.Concurrency < 1 || _options.RepackReadConcurrency < 1 || _options.PacksPerIndex < 1)
        {
            throw new ArgumentOutOfRangeException(nameof(options), "prune's limits and concurrencies must be at least 1");
        }
    }

    /// <summary>Progress, called from worker threads (possibly concurrently); keep it cheap.</summary>
    public Action<PruneProgress>? OnProgress { get; init; }

    private enum PackAction
    {
        Keep,
        Delete,
        Repack,
    }

    private sealed class PackInfo(ObjectId id, long size, IReadOnlyList<PackedBlob>? blobs)
    {
        public ObjectId Id { get; } = id;

        public long Size { get; } = size;

        /// <summary>The index's entries; null for a pack no index names.</summary>
        public IReadOnlyList<PackedBlob>? Blobs { get; } = blobs;

        /// <summary>Per entry: is this the copy of a used blob that prune keeps?</summary>
        public bool[] Used { get; set; } = [];

        public long UsedBytes { get; set; }

        public long UnusedBytes { get; set; }

        public int UsedCount { get; set; }

        public int UnusedCount { get; set; }

        public PackAction Action { get; set; }
    }

    private sealed class Inventory
    {
        public required List<ObjectId> IndexFiles { get; init; }

        public required Dictionary<ObjectId, PackInfo> Packs { get; init; }

        public required Dictionary<ObjectId, BlobLocation> Trees { get; init; }

        public required HashSet<ObjectId> Data { get; init; }
    }

    /// <summary>
    /// Runs the prune. <paramref name="heldLock"/> is the caller's lock on this repository: exclusive, except in a
    /// dry run. Throws <see cref="HavenException"/> (<see cref="ErrorCode.Corrupt"/>) when the repository is damaged
    /// in a way that makes deleting unsafe; nothing has been deleted then.
    /// </summary>
    public async Task<PruneResult> RunAsync(RepositoryLock? heldLock, CancellationToken ct)
    {
        if (!_options.DryRun && heldLock is not { Exclusive: true })
        {
            throw new InvalidOperationException("prune deletes data: the caller must hold an exclusive lock on the repository");
        }

        var inventory = await LoadInventoryAsync(ct).ConfigureAwait(false);
        var (snapshots, usedTrees, usedData) = await MarkAsync(inventory, ct).ConfigureAwait(false);
        Report(PrunePhase.Planning, 0, 0);
        var plan = Plan(inventory, snapshots, usedTrees, usedData);
        if (_options.DryRun || plan.NothingToDo)
        {
            Report(PrunePhase.Done, 0, 0);
            return new PruneResult(plan) { DryRun = _options.DryRun, BytesStillUnused = plan.UnusedAfter };
        }

        var packs = inventory.Packs.Values;
        var repack = packs.Where(p => p.Action == PackAction.Repack).OrderBy(p => p.Id).ToList();
        var written = new RepackWriter(_repo, _options.PacksPerIndex);
        if (repack.Count > 0)
        {
            heldLock!.EnsureValid();
            await RepackAsync(repack, written, ct).ConfigureAwait(false);
        }

        int indexWritten = written.IndexFiles.Count;
        int indexDeleted = 0;
        if (packs.Any(p => p.Blobs is not null && p.Action != PackAction.Keep))
        {
            heldLock!.EnsureValid();
            var retained = packs.Where(p => p.Blobs is not null && p.Action == PackAction.Keep).OrderBy(p => p.Id)
                .Select(p => new IndexedPack(p.Id, p.Blobs!)).Concat(written.Packs).ToList();
            var old = inventory.IndexFiles.Concat(written.IndexFiles).Distinct().Order().ToList();
            indexWritten += await WriteIndexAsync(retained, old, ct).ConfigureAwait(false);
            await DeleteAsync(old.Select(id => new StoreHandle(FileKind.Index, id.ToString())).ToList(), PrunePhase.DeletingIndexFiles, ct).ConfigureAwait(false);
            indexDeleted = old.Count;
        }

        heldLock!.EnsureValid();
        var doomed = packs.Where(p => p.Action != PackAction.Keep).OrderBy(p => p.Id).ToList();
        await DeleteAsync(doomed.Select(p => new StoreHandle(FileKind.Pack, p.Id.ToString())).ToList(), PrunePhase.DeletingPacks, ct).ConfigureAwait(false);

        // The local cache keeps tree packs by name; drop the deleted ones (index and snapshot files are pruned from it
        // whenever they are listed, as the reload below does).
        _repo.Cache?.Prune(FileKind.Pack, packs.Where(p => p.Action == PackAction.Keep).Select(p => p.Id).Concat(written.Packs.Select(p => p.Pack)).Select(id => id.ToString()).ToHashSet());
        await _repo.LoadIndexAsync(ct).ConfigureAwait(false);
        Report(PrunePhase.Done, 0, 0);
        return new PruneResult(plan)
        {
            PacksDeleted = doomed.Count,
            PacksRepacked = repack.Count,
            PacksWritten = written.Packs.Count,
            BytesFreed = doomed.Sum(p => p.Size) - written.BytesWritten,
            BlobsRemoved = plan.BlobsToRemove,
            BytesStillUnused = plan.UnusedAfter,
            IndexFilesWritten = indexWritten,
            IndexFilesDeleted = indexDeleted,
        };
    }

    private void Report(PrunePhase phase, long done, long total) => OnProgress?.Invoke(new PruneProgress(phase, done, total));

    private static HavenException Stopped(string what, string hint, Exception? inner = null, ErrorCode code = ErrorCode.Corrupt) =>
        new(code, $"prune stopped before deleting anything: {what}", hint, inner);

    // ---- (1) index and packs ------------------------------------------------------------------------------------

    private async Task<Inventory> LoadInventoryAsync(CancellationToken ct)
    {
        Report(PrunePhase.LoadingIndex, 0, 0);
        var indexIds = await _repo.ListAsync(FileKind.Index, ct).ConfigureAwait(false);
        var files = new ConcurrentDictionary<ObjectId, IndexFile>();
        long loaded = 0;
        await Parallel.ForEachAsync(indexIds, new ParallelOptions { MaxDegreeOfParallelism = _options.Concurrency, CancellationToken = ct }, async (id, token) =>
        {
            try
            {
                files[id] = await _repo.LoadIndexFileAsync(id, token).ConfigureAwait(false);
            }
            catch (HavenException e) when (e.Code is ErrorCode.Corrupt or ErrorCode.NotFound)
            {
                // Its packs would look unindexed and be deleted: never prune around a damaged index file.
                throw Stopped($"index/{id} cannot be read ({e.Message})", "run 'haven repair index' and 'haven check', then prune again", e);
            }

            Report(PrunePhase.LoadingIndex, Interlocked.Increment(ref loaded), indexIds.Count);
        }).ConfigureAwait(false);

        var stored = new Dictionary<ObjectId, long>();
        await foreach (var f in _repo.Store.ListAsync(FileKind.Pack, ct).ConfigureAwait(false))
        {
            if (ObjectId.TryParse(f.Handle.Name, out var id))
            {
                stored[id] = f.Size;
            }
        }

        var superseded = new HashSet<ObjectId>(files.Values.SelectMany(f => f.Supersedes));
        var packs = new Dictionary<ObjectId, PackInfo>();
        var missing = new List<ObjectId>();
        foreach (var (_, file) in files.Where(f => !superseded.Contains(f.Key)).OrderBy(f => f.Key))
        {
            foreach (var pack in file.Packs)
            {
                if (packs.ContainsKey(pack.Pack))
                {
                    continue; // named by two index files (e.g. recovered twice): the entries are the pack's header either way
                }

                if (!stored.TryGetValue(pack.Pack, out long size))
                {
                    missing.Add(pack.Pack);
                    continue;
                }

                long end = pack.Blobs.Count == 0 ? 0 : pack.Blobs.Max(b => b.Offset + b.Length);
                if (end > size)
                {
                    throw Stopped($"pack {PackPath(pack.Pack)} has {size} bytes but the index places blobs up to byte {end}",
                        "run 'haven check --read-data' and 'haven repair index', then prune again");
                }

                packs[pack.Pack] = new PackInfo(pack.Pack, size, pack.Blobs);
            }
        }

        if (missing.Count > 0)
        {
            throw Stopped($"{missing.Count} pack(s) named by the index are missing, e.g. {PackPath(missing[0])}",
                "run 'haven check' to see what is affected and 'haven repair index' to drop the missing packs from the index");
        }

        foreach (var (id, size) in stored)
        {
            if (!packs.ContainsKey(id))
            {
                packs[id] = new PackInfo(id, size, null) { Action = PackAction.Delete };
            }
        }

        var trees = new Dictionary<ObjectId, BlobLocation>();
        var data = new HashSet<ObjectId>();
        foreach (var pack in packs.Values.Where(p => p.Blobs is not null).OrderBy(p => p.Id))
        {
            foreach (var blob in pack.Blobs!)
            {
                if (blob.Type == BlobType.Tree)
                {
                    trees.TryAdd(blob.Id, new BlobLocation(pack.Id, blob));
                }
                else
                {
                    data.Add(blob.Id);
                }
            }
        }

        return new Inventory { IndexFiles = indexIds, Packs = packs, Trees = trees, Data = data };
    }

    private static string PackPath(ObjectId pack) => StoreLayout.PathOf(new StoreHandle(FileKind.Pack, pack.ToString()));

    // ---- (2) mark -----------------------------------------------------------------------------------------------

    private async Task<(int Snapshots, HashSet<ObjectId> Trees, HashSet<ObjectId> Data)> MarkAsync(Inventory inventory, CancellationToken ct)
    {
        Report(PrunePhase.Marking, 0, 0);
        const string hint = "run 'haven check' to see the damage and 'haven repair' to fix it, then prune again";
        List<(ObjectId Id, Snapshot Snapshot)> snapshots;
        try
        {
            snapshots = await _repo.LoadSnapshotsAsync(ct).ConfigureAwait(false);
        }
        catch (HavenException e) when (e.Code is ErrorCode.Corrupt or ErrorCode.NotFound or ErrorCode.UnsupportedFormat)
        {
            throw Stopped($"a snapshot cannot be read, so the data it needs is unknown ({e.Message})", e.Hint ?? hint, e,
                e.Code == ErrorCode.UnsupportedFormat ? ErrorCode.UnsupportedFormat : ErrorCode.Corrupt);
        }

        var live = snapshots.Where(s => !_options.IgnoreSnapshots.Contains(s.Id)).ToList();
        var usedTrees = new ConcurrentDictionary<ObjectId, byte>();
        var usedData = new ConcurrentDictionary<ObjectId, byte>();
        var level = new List<(ObjectId Tree, ObjectId Snapshot)>();
        foreach (var (id, snapshot) in live)
        {
            if (usedTrees.TryAdd(snapshot.TreeId, 0))
            {
                level.Add((snapshot.TreeId, id));
            }
        }

        long done = 0;
        var options = new ParallelOptions { MaxDegreeOfParallelism = _options.Concurrency, CancellationToken = ct };
        while (level.Count > 0)
        {
            var next = new ConcurrentQueue<(ObjectId, ObjectId)>();
            await Parallel.ForEachAsync(level, options, async (item, token) =>
            {
                var (tree, owner) = item;
                if (!inventory.Trees.TryGetValue(tree, out var location))
                {
                    throw Stopped($"tree {tree.Short} of snapshot {owner.Short} is in no index", hint);
                }

                List<Node> nodes;
                try
                {
                    nodes = TreeCodec.Decode(await _repo.ReadBlobAsync(location, token).ConfigureAwait(false));
                }
                catch (HavenException e)
                {
                    throw Stopped($"tree {tree.Short} of snapshot {owner.Short} cannot be loaded ({e.Message})", hint, e);
                }
                catch (MalformedDataException e)
                {
                    throw Stopped($"tree {tree.Short} of snapshot {owner.Short} is damaged ({e.Message})", hint, e);
                }

                foreach (var node in nodes)
                {
                    if (node.Subtree is { } sub && usedTrees.TryAdd(sub, 0))
                    {
                        next.Enqueue((sub, owner));
                    }

                    foreach (var blob in node.Content ?? [])
                    {
                        if (usedData.TryAdd(blob, 0) && !inventory.Data.Contains(blob))
                        {
                            // Perhaps only its index file is lost and the pack is still there, unindexed: deleting
                            // unindexed packs now could destroy the only copy.
                            throw Stopped($"snapshot {owner.Short} needs data blob {blob.Short} (of '{node.DisplayName}'), which is in no index", hint);
                        }
                    }
                }

                Report(PrunePhase.Marking, Interlocked.Increment(ref done), 0);
            }).ConfigureAwait(false);
            level = next.ToList();
        }

        return (live.Count, usedTrees.Keys.ToHashSet(), usedData.Keys.ToHashSet());
    }

    // ---- (3) plan -----------------------------------------------------------------------------------------------

    private PrunePlan Plan(Inventory inventory, int snapshots, HashSet<ObjectId> usedTrees, HashSet<ObjectId> usedData)
    {
        bool IsUsed(in PackedBlob b) => b.Type == BlobType.Tree ? usedTrees.Contains(b.Id) : usedData.Contains(b.Id);

        var indexed = inventory.Packs.Values.Where(p => p.Blobs is not null).ToList();
        var fullness = indexed.ToDictionary(p => p.Id, p =>
        {
            long all = 0, used = 0;
            foreach (var b in p.Blobs!)
            {
                all += b.Length;
                used += IsUsed(b) ? b.Length : 0;
            }

            return all == 0 ? 0.0 : (double)used / all;
        });

        // Keep one copy of each used blob, in the fullest pack holding it: the emptier packs are the ones that get
        // deleted or repacked, and their extra copies go with them.
        var claimed = new HashSet<(ObjectId, BlobType)>();
        long duplicates = 0;
        foreach (var pack in indexed.OrderByDescending(p => fullness[p.Id]).ThenByDescending(p => p.Size).ThenBy(p => p.Id))
        {
            var blobs = pack.Blobs!;
            pack.Used = new bool[blobs.Count];
            for (int i = 0; i < blobs.Count; i++)
            {
                var b = blobs[i];
                bool used = IsUsed(b);
                if (used && claimed.Add((b.Id, b.Type)))
                {
                    pack.Used[i] = true;
                    pack.UsedBytes += b.Length;
                    pack.UsedCount++;
                }
                else
                {
                    duplicates += used ? 1 : 0;
                    pack.UnusedBytes += b.Length;
                    pack.UnusedCount++;
                }
            }

            pack.Action = pack.UsedCount == 0 ? PackAction.Delete : PackAction.Keep;
        }

        long usedBytes = indexed.Sum(p => p.UsedBytes);
        long unusedAfter = indexed.Where(p => p.Action == PackAction.Keep).Sum(p => p.UnusedBytes);
        long allowed = _options.MaxUnused.AllowedFor(usedBytes);
        long budget = _options.MaxRepackSize ?? long.MaxValue;
        long repackBytes = 0;
        var candidates = indexed.Where(p => p.Action == PackAction.Keep && p.UnusedCount > 0)
            .OrderByDescending(p => (double)p.UnusedBytes / p.Size).ThenByDescending(p => p.UnusedBytes).ThenBy(p => p.Id);
        foreach (var pack in candidates)
        {
            if (unusedAfter <= allowed)
            {
                break;
            }

            if (repackBytes + pack.Size > budget)
            {
                continue; // a smaller candidate may still fit
            }

            pack.Action = PackAction.Repack;
            repackBytes += pack.Size;
            unusedAfter -= pack.UnusedBytes;
        }

        if (_options.RepackSmall)
        {
            // Data and trees go into separate packs, so small packs merge per blob type; one small pack of a type
            // alone would only be copied into another small pack.
            long small = _repo.Config.PackSize / 4;
            foreach (var ofType in indexed.Where(p => p.Size < small && p.Action != PackAction.Delete && p.Blobs!.Count > 0).GroupBy(p => p.Blobs![0].Type).OrderBy(g => g.Key))
            {
                if (ofType.Count() < 2)
                {
                    continue;
                }

                foreach (var pack in ofType.Where(p => p.Action == PackAction.Keep).OrderBy(p => p.Size).ThenBy(p => p.Id))
                {
                    if (repackBytes + pack.Size > budget)
                    {
                        break;
                    }

                    pack.Action = PackAction.Repack;
                    repackBytes += pack.Size;
                    unusedAfter -= pack.UnusedBytes;
                }
            }
        }

        var delete = indexed.Where(p => p.Action == PackAction.Delete).ToList();
        var repack = indexed.Where(p => p.Action == PackAction.Repack).ToList();
        var unindexed = inventory.Packs.Values.Where(p => p.Blobs is null).ToList();
        bool rewrite = delete.Count > 0 || repack.Count > 0;
        return new PrunePlan
        {
            Snapshots = snapshots,
            PacksTotal = inventory.Packs.Count,
            BytesTotal = inventory.Packs.Values.Sum(p => p.Size),
            UsedBlobs = indexed.Sum(p => (long)p.UsedCount),
            UsedBytes = usedBytes,
            UnusedBlobs = indexed.Sum(p => (long)p.UnusedCount),
            UnusedBytes = indexed.Sum(p => p.UnusedBytes),
            DuplicateBlobs = duplicates,
            PacksToDelete = delete.Count,
            BytesToDelete = delete.Sum(p => p.Size),
            UnindexedPacks = unindexed.Count,
            UnindexedBytes = unindexed.Sum(p => p.Size),
            PacksToRepack = repack.Count,
            BytesToRepack = repackBytes,
            RepackUsedBytes = repack.Sum(p => p.UsedBytes),
            PacksToKeep = indexed.Count(p => p.Action == PackAction.Keep),
            UnusedAfter = unusedAfter,
            BlobsToRemove = delete.Sum(p => (long)p.Blobs!.Count) + repack.Sum(p => (long)p.UnusedCount),
            IndexFilesToReplace = rewrite ? inventory.IndexFiles.Count : 0,
        };
    }

    // ---- (4) execute --------------------------------------------------------------------------------------------

    /// <summary>
    /// Copies the kept blobs of <paramref name="packs"/> into new packs. Downloads run ahead on
    /// <see cref="PruneOptions.RepackReadConcurrency"/> workers through a channel of two; one consumer fills the packs,
    /// so pack contents do not depend on download timing more than necessary and memory stays bounded.
    /// </summary>
    private async Task RepackAsync(List<PackInfo> packs, RepackWriter writer, CancellationToken ct)
    {
        Report(PrunePhase.Repacking, 0, packs.Count);
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(ct);
        var channel = Channel.CreateBounded<(PackInfo Pack, byte[] Bytes, long Start)>(new BoundedChannelOptions(2) { SingleReader = true });
        var reader = Task.Run(async () =>
        {
            try
            {
                await Parallel.ForEachAsync(packs, new ParallelOptions { MaxDegreeOfParallelism = _options.RepackReadConcurrency, CancellationToken = cts.Token }, async (pack, token) =>
                {
                    var (bytes, start) = await ReadUsedBlobsAsync(pack, token).ConfigureAwait(false);
                    await channel.Writer.WriteAsync((pack, bytes, start), token).ConfigureAwait(false);
                }).ConfigureAwait(false);
                channel.Writer.TryComplete();
            }
            catch (Exception e)
            {
                channel.Writer.TryComplete(e);
            }
        }, CancellationToken.None);

        try
        {
            int done = 0;
            await foreach (var (pack, bytes, start) in channel.Reader.ReadAllAsync(cts.Token).ConfigureAwait(false))
            {
                for (int i = 0; i < pack.Blobs!.Count; i++)
                {
                    if (pack.Used[i])
                    {
                        var b = pack.Blobs[i];
                        await writer.AddAsync(b, bytes.AsMemory((int)(b.Offset - start), b.Length), ct).ConfigureAwait(false);
                    }
                }

                Report(PrunePhase.Repacking, ++done, packs.Count);
            }

            await writer.FlushAsync(ct).ConfigureAwait(false);
        }
        finally
        {
            await cts.CancelAsync().ConfigureAwait(false);
            await reader.ConfigureAwait(false); // never throws: failures complete the channel
        }
    }

    /// <summary>Reads the span of a pack that covers its kept blobs and verifies each of them (authentication and id).</summary>
    private async Task<(byte[] Bytes, long Start)> ReadUsedBlobsAsync(PackInfo pack, CancellationToken ct)
    {
        var used = pack.Blobs!.Where((_, i) => pack.Used[i]).ToList();
        long start = used.Min(b => b.Offset);
        long end = used.Max(b => b.Offset + b.Length);
        var bytes = new byte[end - start];
        try
        {
            await _repo.Store.ReadRangeAsync(new StoreHandle(FileKind.Pack, pack.Id.ToString()), start, bytes, ct).ConfigureAwait(false);
        }
        catch (StoreException e) when (e.Kind is StoreErrorKind.NotFound or StoreErrorKind.Permanent)
        {
            throw Stopped($"pack {PackPath(pack.Id)} cannot be read for repacking ({e.Message})", "run 'haven check --read-data' and 'haven repair', then prune again", e);
        }

        foreach (var b in used)
        {
            var plain = new byte[b.RawLength];
            if (!_repo.Codec.TryDecode(b, bytes.AsSpan((int)(b.Offset - start), b.Length), plain) || _repo.Key.BlobId(plain) != b.Id)
            {
                throw Stopped($"{(b.Type == BlobType.Tree ? "tree" : "data")} blob {b.Id.Short} in pack {PackPath(pack.Id)} is damaged and cannot be repacked",
                    "run 'haven check --read-data' to find all damage and 'haven repair' to salvage, then prune again");
            }
        }

        return (bytes, start);
    }

    /// <summary>
    /// Writes index files for <paramref name="packs"/>; the last one supersedes <paramref name="superseded"/>.
    /// Returns the number of files written.
    /// </summary>
    private async Task<int> WriteIndexAsync(List<IndexedPack> packs, List<ObjectId> superseded, CancellationToken ct)
    {
        var files = IndexFile.Replacement(packs, superseded, _options.MaxBlobsPerIndex);
        for (int i = 0; i < files.Count; i++)
        {
            Report(PrunePhase.WritingIndex, i, files.Count);
            await _repo.SaveSealedAsync(FileKind.Index, files[i].Encode(), ct).ConfigureAwait(false);
        }

        Report(PrunePhase.WritingIndex, files.Count, files.Count);
        return files.Count;
    }

    private async Task DeleteAsync(List<StoreHandle> handles, PrunePhase phase, CancellationToken ct)
    {
        long done = 0;
        Report(phase, 0, handles.Count);
        await Parallel.ForEachAsync(handles, new ParallelOptions { MaxDegreeOfParallelism = _options.Concurrency, CancellationToken = ct }, async (handle, token) =>
        {
            await _repo.Store.DeleteAsync(handle, token).ConfigureAwait(false);
            Report(phase, Interlocked.Increment(ref done), handles.Count);
        }).ConfigureAwait(false);
    }

    /// <summary>
    /// Packs for repacked blobs. Not <see cref="BlobWriter"/>: that one skips every blob the loaded index already
    /// knows, and the blobs being repacked are known by definition. This writer copies stored (sealed) blob bytes
    /// unchanged: a sealed blob is bound to its type and id, not to its pack, so no re-encryption is needed, and the
    /// caller has verified each blob before handing it over. Single-threaded (the repack consumer).
    /// </summary>
    private sealed class RepackWriter(Repository repo, int packsPerIndex)
    {
        private readonly PackBuilder?[] _builders = new PackBuilder?[2];
        private readonly List<IndexedPack> _unindexed = [];

        public List<IndexedPack> Packs { get; } = [];

        public List<ObjectId> IndexFiles { get; } = [];

        public long BytesWritten { get; private set; }

        public async Task AddAsync(PackedBlob blob, ReadOnlyMemory<byte> stored, CancellationToken ct)
        {
            int slot = blob.Type == BlobType.Tree ? 1 : 0;
            var builder = _builders[slot] ??= new PackBuilder(repo.Aead, repo.Config.PackSize + (1024 * 1024));
            builder.Add(blob.Id, blob.Type, blob.Flags, stored.Span, blob.RawLength);
            if (builder.Length >= repo.Config.PackSize)
            {
                _builders[slot] = null;
                await UploadAsync(builder, ct).ConfigureAwait(false);
            }
        }

        public async Task FlushAsync(CancellationToken ct)
        {
            for (int slot = 0; slot < _builders.Length; slot++)
            {
                if (_builders[slot] is { Count: > 0 } builder)
                {
                    _builders[slot] = null;
                    await UploadAsync(builder, ct).ConfigureAwait(false);
                }
            }

            await WriteIndexAsync(ct).ConfigureAwait(false);
        }

        private async Task UploadAsync(PackBuilder builder, CancellationToken ct)
        {
            var (bytes, name) = builder.Finish();
            await repo.Store.PutAsync(new StoreHandle(FileKind.Pack, name.ToString()), bytes, ct).ConfigureAwait(false);
            if (repo.Cache is not null && builder.Blobs[0].Type == BlobType.Tree)
            {
                repo.Cache.Put(FileKind.Pack, name.ToString(), bytes.Span); // as BlobWriter does: every command reads trees
            }

            var pack = new IndexedPack(name, builder.Blobs.ToArray());
            Packs.Add(pack);
            _unindexed.Add(pack);
            BytesWritten += bytes.Length;
            if (_unindexed.Count >= packsPerIndex)
            {
                await WriteIndexAsync(ct).ConfigureAwait(false);
            }
        }

        private async Task WriteIndexAsync(CancellationToken ct)
        {
            if (_unindexed.Count == 0)
            {
                return;
            }

            var file = new IndexFile();
            file.Packs.AddRange(_unindexed);
            IndexFiles.Add(await repo.SaveSealedAsync(FileKind.Index, file.Encode(), ct).ConfigureAwait(false));
            _unindexed.Clear();
        }
    }
}
