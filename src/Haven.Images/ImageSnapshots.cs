using Haven.Core;
using Haven.Core.Posix;
using Haven.Repository;
using Haven.Repository.Model;

namespace Haven.Images;

/// <summary>
/// How an image snapshot is laid out in the repository (docs/design/repository-format.md, "Image snapshots"): the
/// snapshot carries an <see cref="ImageSummary"/>, and its tree holds regular-file nodes whose contents are data
/// blobs, so prune, check and copy reach every blob of an image as they reach a file's:
/// <list type="bullet">
/// <item><c>blockmap</c>: the encoded <see cref="BlockMap"/>, cut in pieces of at most <see cref="MapPiece"/> bytes;</item>
/// <item><c>blocks-00000</c>, <c>blocks-00001</c>, …: the distinct storage chunks, in order of first use, at most
/// <see cref="IdsPerNode"/> to a node.</item>
/// </list>
/// </summary>
public static class ImageSnapshots
{
    public const string MapNode = "blockmap";
    public const int MapPiece = 1 << 20;
    public const int IdsPerNode = 20_000;

    /// <summary>The newest image snapshot of <paramref name="source"/> on <paramref name="host"/>, if any.</summary>
    public static async Task<(ObjectId Id, Snapshot Snapshot)?> FindPreviousAsync(Repository.Repository repo, string host, string source, CancellationToken ct)
    {
        var all = await repo.LoadSnapshotsAsync(ct, onDamaged: (_, _) => { }).ConfigureAwait(false);
        var match = all.LastOrDefault(s => s.Snapshot.Image is not null && s.Snapshot.Hostname == host && s.Snapshot.Paths.Count == 1 && s.Snapshot.Paths[0] == source);
        return match.Snapshot is null ? null : match;
    }

    /// <summary>The block map of the image snapshot a changed-block map names, or null when it is gone, damaged or no image.</summary>
    public static async Task<BlockMap?> TryLoadMapAsync(Repository.Repository repo, string snapshotId, CancellationToken ct)
    {
        if (!ObjectId.TryParse(snapshotId, out var id))
        {
            return null;
        }

        try
        {
            var snapshot = await repo.LoadSnapshotAsync(id, ct).ConfigureAwait(false);
            return snapshot.Image is null ? null : await LoadMapAsync(repo, id, snapshot, ct).ConfigureAwait(false);
        }
        catch (HavenException)
        {
            return null;
        }
    }

    public static async Task<BlockMap> LoadMapAsync(Repository.Repository repo, ObjectId id, Snapshot snapshot, CancellationToken ct)
    {
        if (snapshot.Image is null)
        {
            throw new HavenException(ErrorCode.Usage, $"snapshot {id.Short} is a file snapshot, not an image", "restore it with haven restore");
        }

        var nodes = await repo.LoadTreeAsync(snapshot.TreeId, ct).ConfigureAwait(false);
        var node = nodes.FirstOrDefault(n => n.DisplayName == MapNode)
            ?? throw new HavenException(ErrorCode.Corrupt, $"image snapshot {id.Short} has no block map", "run haven check");
        using var bytes = new MemoryStream((int)Math.Min(node.Size, int.MaxValue));
        foreach (var piece in node.Content ?? [])
        {
            var plaintext = await repo.ReadBlobAsync(piece, ct).ConfigureAwait(false);
            bytes.Write(plaintext);
        }

        var map = BlockMap.Decode(bytes.GetBuffer().AsSpan(0, (int)bytes.Length), $"snapshot {id.Short}");
        if (map.ImageSize != snapshot.Image.Size || map.BlockSize != snapshot.Image.BlockSize)
        {
            throw new HavenException(ErrorCode.Corrupt, $"the block map of snapshot {id.Short} does not match the snapshot's image size or block size", "run haven check");
        }

        return map;
    }

    /// <summary>Stores the map and the list of distinct storage chunks through <paramref name="writer"/>; returns the tree's id.</summary>
    public static async Task<ObjectId> SaveTreeAsync(Repository.Repository repo, BlobWriter writer, BlockMap map, CancellationToken ct)
    {
        var encoded = map.Encode();
        var mapPieces = new List<ObjectId>();
        for (int at = 0; at < encoded.Length; at += MapPiece)
        {
            var piece = encoded.AsMemory(at, Math.Min(MapPiece, encoded.Length - at));
            var id = repo.Key.BlobId(piece.Span);
            await writer.SaveAsync(BlobType.Data, id, piece, ct).ConfigureAwait(false);
            mapPieces.Add(id);
        }

        var nodes = new List<Node> { FileNode(MapNode, encoded.Length, mapPieces) };
        // The blobs' lengths are not in the map; a blob holds at least the bytes its placements take from it.
        var lengths = new Dictionary<ObjectId, long>();
        var distinct = new List<ObjectId>();
        foreach (var p in map.Placements)
        {
            if (!lengths.TryGetValue(p.Id, out long known))
            {
                distinct.Add(p.Id);
            }

            lengths[p.Id] = Math.Max(known, (long)p.Skip + p.Length);
        }

        foreach (var (ids, n) in distinct.Chunk(IdsPerNode).Select((ids, n) => (ids, n)))
        {
            nodes.Add(FileNode($"blocks-{n:00000}", ids.Sum(id => lengths[id]), ids));
        }

        nodes.Sort((a, b) => a.Name.AsSpan().SequenceCompareTo(b.Name));
        var tree = TreeCodec.Encode(nodes);
        var treeId = repo.Key.BlobId(tree);
        await writer.SaveAsync(BlobType.Tree, treeId, tree, ct).ConfigureAwait(false);
        return treeId;
    }

    private static Node FileNode(string name, long size, IReadOnlyList<ObjectId> content) => new()
    {
        Name = System.Text.Encoding.UTF8.GetBytes(name),
        Type = FileType.Regular,
        Mode = 0x180, // 0600
        Size = size,
        Content = content,
    };
}
