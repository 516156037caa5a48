using System.Collections.Concurrent;
using Haven.Core;
using Haven.Repository.Model;
using Haven.Repository.Packs;

namespace Haven.Repository.Index;

/// <summary>Where a blob is: its pack and its entry.</summary>
public readonly record struct BlobLocation(ObjectId Pack, PackedBlob Blob);

/// <summary>
/// Every blob the loaded index files know, keyed by id. Thread-safe: backups look ids up from many threads while
/// packs finish on others. When a blob is stored twice (two writers raced), the first location wins; prune removes
/// the other copy.
/// </summary>
public sealed class MasterIndex
{
    private readonly record struct Entry(int PackOrdinal, PackedBlob Blob);

    private readonly ConcurrentDictionary<ObjectId, Entry> _blobs = new();
    private readonly List<ObjectId> _packs = [];
    private readonly Dictionary<ObjectId, int> _packOrdinals = [];
    private readonly Lock _packLock = new();

    public int Count => _blobs.Count;

    public int PackCount
    {
        get { lock (_packLock) { return _packs.Count; } }
    }

    public bool Contains(ObjectId id) => _blobs.ContainsKey(id);

    public bool TryGet(ObjectId id, out BlobLocation location)
    {
        if (_blobs.TryGetValue(id, out var e))
        {
            ObjectId pack;
            lock (_packLock)
            {
                pack = _packs[e.PackOrdinal];
            }

            location = new BlobLocation(pack, e.Blob);
            return true;
        }

        location = default;
        return false;
    }

    public void Add(IndexedPack pack)
    {
        int ordinal;
        lock (_packLock)
        {
            if (!_packOrdinals.TryGetValue(pack.Pack, out ordinal))
            {
                ordinal = _packs.Count;
                _packs.Add(pack.Pack);
                _packOrdinals.Add(pack.Pack, ordinal);
            }
        }

        foreach (var blob in pack.Blobs)
        {
            _blobs.TryAdd(blob.Id, new Entry(ordinal, blob));
        }
    }

    public bool ContainsPack(ObjectId pack)
    {
        lock (_packLock)
        {
            return _packOrdinals.ContainsKey(pack);
        }
    }

    public IReadOnlyList<ObjectId> Packs()
    {
        lock (_packLock)
        {
            return _packs.ToArray();
        }
    }

    /// <summary>All known blobs with their locations (a snapshot of the moment).</summary>
    public IEnumerable<BlobLocation> All()
    {
        ObjectId[] packs;
        lock (_packLock)
        {
            packs = _packs.ToArray();
        }

        foreach (var (_, e) in _blobs)
        {
            yield return new BlobLocation(packs[e.PackOrdinal], e.Blob);
        }
    }
}
