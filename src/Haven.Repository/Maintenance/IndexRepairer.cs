using System.Collections.Concurrent;
using Haven.Core;
using Haven.Repository.Index;
using Haven.Repository.Packs;
using Haven.Storage;

namespace Haven.Repository.Maintenance;

/// <summary>Tuning of <see cref="IndexRepairer"/>.</summary>
public sealed record IndexRepairOptions
{
    /// <summary>Pack headers read at once. A header read is one small ranged request, so latency, not bandwidth, bounds it.</summary>
    public int ReadConcurrency { get; init; } = 8;

    /// <summary>Blobs per new index file (see <see cref="IndexFile.Replacement"/>).</summary>
    public int MaxBlobsPerIndexFile { get; init; } = IndexFile.DefaultMaxBlobsPerFile;
}

/// <summary>One pack or index file that <see cref="IndexRepairer"/> found damaged, and what it did about it.</summary>
public sealed record IndexRepairProblem(string Object, string Message);

/// <summary>What <c>repair index</c> did.</summary>
/// <param name="PacksRead">Packs whose header was read and used.</param>
/// <param name="PacksDamaged">Packs whose header could not be read (their old index entries were kept when there were any).</param>
/// <param name="BlobsIndexed">Blobs the new index names.</param>
/// <param name="OrphanPacksIndexed">Readable packs that no readable index named before (left by interrupted backups).</param>
/// <param name="IndexFilesWritten">New index files.</param>
/// <param name="IndexFilesRemoved">Old index files deleted (readable or not).</param>
/// <param name="MissingPacksDropped">Packs the old index named that no longer exist (their entries are left out of the new index).</param>
public sealed record IndexRepairResult(
    int PacksRead,
    int PacksDamaged,
    long BlobsIndexed,
    int OrphanPacksIndexed,
    int IndexFilesWritten,
    int IndexFilesRemoved,
    int MissingPacksDropped,
    IReadOnlyList<IndexRepairProblem> Problems);

/// <summary>
/// <c>repair index</c>: rebuilds the index from the pack headers, which hold everything an index entry needs
/// (normative: docs/design/repository-format.md §7, §8).
/// <list type="number">
/// <item>Read every index file that still opens: their entries are the fallback for packs whose header is damaged.</item>
/// <item>List all packs and read every header (in parallel, bounded by <see cref="IndexRepairOptions.ReadConcurrency"/>).</item>
/// <item>Write new index files for every readable pack, plus the old entries of damaged packs. Only the <b>last</b> new
/// file lists the old index files as superseded: until it is stored, readers see old and new files together (the same
/// blobs twice, which the master index tolerates); once it is, they see only the new ones. There is no moment at which a
/// blob is unindexed, and an interruption leaves a readable repository.</item>
/// <item>Delete the old index files, damaged ones included (a damaged index file makes every later load fail).</item>
/// </list>
/// The caller holds an exclusive lock. Transient store errors abort the run before anything is deleted. Afterwards the
/// repository's in-memory index is reloaded from the new files.
/// </summary>
public sealed class IndexRepairer(Repository repo, IndexRepairOptions? options = null)
{
    private readonly IndexRepairOptions _options = options ?? new IndexRepairOptions();

    /// <summary>Called with a short description of each phase (from the calling thread).</summary>
    public Action<string>? OnPhase { get; init; }

    /// <summary>Pack headers read so far and the number of packs; safe to read from any thread while <see cref="RunAsync"/> runs.</summary>
    public (int Done, int Total) Progress => (Volatile.Read(ref _packsDone), Volatile.Read(ref _packsTotal));

    private int _packsDone;
    private int _packsTotal;

    public async Task<IndexRepairResult> RunAsync(CancellationToken ct)
    {
        var problems = new ConcurrentQueue<IndexRepairProblem>();

        OnPhase?.Invoke("reading index files");
        var oldFiles = await repo.ListAsync(FileKind.Index, ct).ConfigureAwait(false);
        var loaded = new ConcurrentDictionary<ObjectId, IndexFile>();
        await Parallel.ForEachAsync(oldFiles, new ParallelOptions { MaxDegreeOfParallelism = _options.ReadConcurrency, CancellationToken = ct }, async (id, token) =>
        {
            try
            {
                loaded[id] = await repo.LoadIndexFileAsync(id, token).ConfigureAwait(false);
            }
            catch (HavenException e) when (e.Code is ErrorCode.Corrupt or ErrorCode.NotFound or ErrorCode.UnsupportedFormat)
            {
                problems.Enqueue(new IndexRepairProblem($"index/{id}", $"{e.Message}; it is replaced"));
            }
        }).ConfigureAwait(false);

        // What the old index knew, per pack: from the files readers used (not superseded) first, then from superseded
        // leftovers of an interrupted prune or repair. Entries of one pack name are the same in every file (a pack's
        // name is the hash of its bytes).
        var superseded = new HashSet<ObjectId>(loaded.Values.SelectMany(f => f.Supersedes));
        var oldEntries = new Dictionary<ObjectId, IReadOnlyList<PackedBlob>>();
        var knownPacks = new HashSet<ObjectId>();
        foreach (var (id, file) in loaded.OrderBy(f => superseded.Contains(f.Key)))
        {
            foreach (var pack in file.Packs)
            {
                oldEntries.TryAdd(pack.Pack, pack.Blobs);
                if (!superseded.Contains(id))
                {
                    knownPacks.Add(pack.Pack);
                }
            }
        }

        OnPhase?.Invoke("listing packs");
        var packs = new List<StoreFileInfo>();
        await foreach (var f in repo.Store.ListAsync(FileKind.Pack, ct).ConfigureAwait(false))
        {
            packs.Add(f);
        }

        Volatile.Write(ref _packsTotal, packs.Count);
        OnPhase?.Invoke($"reading {packs.Count} pack header(s)");
        var headers = new ConcurrentDictionary<ObjectId, IReadOnlyList<PackedBlob>>();
        var damaged = new ConcurrentBag<ObjectId>();
        var vanished = new ConcurrentBag<ObjectId>();
        await Parallel.ForEachAsync(packs, new ParallelOptions { MaxDegreeOfParallelism = _options.ReadConcurrency, CancellationToken = ct }, async (info, token) =>
        {
            var pack = ObjectId.Parse(info.Handle.Name);
            try
            {
                headers[pack] = await PackFormat.ReadHeaderAsync(repo.Store, repo.Aead, info.Handle.Name, info.Size, token).ConfigureAwait(false);
            }
            catch (StoreException e) when (e.Kind == StoreErrorKind.NotFound)
            {
                vanished.Add(pack); // deleted since the listing (only possible without the exclusive lock): not indexed
            }
            catch (Exception e) when (e is HavenException { Code: ErrorCode.Corrupt } or StoreException { Kind: StoreErrorKind.Permanent })
            {
                damaged.Add(pack);
                string kept = oldEntries.TryGetValue(pack, out var entries)
                    ? $"its {entries.Count} entries from the old index are kept"
                    : "no index knew it, so its blobs stay unindexed";
                problems.Enqueue(new IndexRepairProblem(StoreLayout.PathOf(info.Handle), $"header cannot be read ({Describe(e, info.Handle)}); {kept}"));
            }

            Interlocked.Increment(ref _packsDone);
        }).ConfigureAwait(false);

        var stored = packs.Select(p => ObjectId.Parse(p.Handle.Name)).Except(vanished).ToHashSet();
        var newPacks = new List<IndexedPack>(packs.Count);
        foreach (var (pack, blobs) in headers.OrderBy(h => h.Key))
        {
            newPacks.Add(new IndexedPack(pack, blobs));
        }

        foreach (var pack in damaged.Order())
        {
            if (oldEntries.TryGetValue(pack, out var blobs))
            {
                newPacks.Add(new IndexedPack(pack, blobs));
            }
        }

        int orphans = headers.Keys.Count(p => !knownPacks.Contains(p));
        int dropped = knownPacks.Count(p => !stored.Contains(p));

        OnPhase?.Invoke("writing the new index");
        var files = IndexFile.Replacement(newPacks, oldFiles, _options.MaxBlobsPerIndexFile);
        foreach (var file in files)
        {
            await repo.SaveSealedAsync(FileKind.Index, file.Encode(), ct).ConfigureAwait(false);
        }

        int written = files.Count;
        OnPhase?.Invoke("removing the old index files");
        foreach (var id in oldFiles)
        {
            await repo.Store.DeleteAsync(new StoreHandle(FileKind.Index, id.ToString()), ct).ConfigureAwait(false);
        }

        await repo.LoadIndexAsync(ct).ConfigureAwait(false);
        return new IndexRepairResult(
            PacksRead: headers.Count,
            PacksDamaged: damaged.Count,
            BlobsIndexed: newPacks.Sum(p => (long)p.Blobs.Count),
            OrphanPacksIndexed: orphans,
            IndexFilesWritten: written,
            IndexFilesRemoved: oldFiles.Count,
            MissingPacksDropped: dropped,
            Problems: problems.ToArray());
    }

    private static string Describe(Exception e, StoreHandle handle)
    {
        // ReadHeaderAsync's messages start with "pack data/xx/… is damaged: "; the caller already names the pack.
        string prefix = $"pack {StoreLayout.PathOf(handle)} is damaged: ";
        return e.Message.StartsWith(prefix, StringComparison.Ordinal) ? e.Message[prefix.Length..] : e.Message;
    }
}
