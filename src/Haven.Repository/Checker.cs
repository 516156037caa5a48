using System.Collections.Concurrent;
using System.Security.Cryptography;
using Haven.Core;
using Haven.Core.Posix;
using Haven.Repository.Index;
using Haven.Repository.Model;
using Haven.Repository.Packs;
using Haven.Storage;

namespace Haven.Repository;

public sealed record CheckOptions
{
    public bool ReadData { get; init; }

    /// <summary>Read only part of the packs: "n/m" (the n-th of m groups), or "p%" (a random p percent).</summary>
    public string? ReadDataSubset { get; init; }
}

/// <summary>One thing found wrong. <see cref="IsError"/> false means harmless (e.g. unreferenced data prune will remove).</summary>
public sealed record CheckProblem(string Object, string Message, bool IsError = true);

public sealed record CheckResult(IReadOnlyList<CheckProblem> Problems, int Snapshots, int Trees, int Packs, int PacksRead, long BlobsRead)
{
    public bool HasErrors => Problems.Any(p => p.IsError);
}

/// <summary>
/// Verifies a repository: every index and snapshot file opens, every pack an index names exists with a plausible
/// size, every tree of every snapshot decodes and every blob it references is indexed; with read-data, every pack
/// (or a subset) is read whole: its SHA-256 must match its name, its header must match the index, and every blob
/// must decrypt, decompress and hash to its id. Problems name the damaged file.
/// </summary>
public sealed class Checker(Repository repo, CheckOptions options)
{
    private readonly ConcurrentQueue<CheckProblem> _problems = new();

    public Action<string>? OnPhase { get; init; }

    public async Task<CheckResult> RunAsync(CancellationToken ct)
    {
        OnPhase?.Invoke("loading index files");
        await repo.LoadIndexAsync(ct, (id, e) => _problems.Enqueue(new CheckProblem($"index/{id}", e.Message))).ConfigureAwait(false);

        OnPhase?.Invoke("checking packs");
        var stored = new Dictionary<ObjectId, long>();
        await foreach (var f in repo.Store.ListAsync(FileKind.Pack, ct).ConfigureAwait(false))
        {
            stored[ObjectId.Parse(f.Handle.Name)] = f.Size;
        }

        var indexed = repo.Index.All().GroupBy(b => b.Pack).ToDictionary(g => g.Key, g => g.Select(b => b.Blob).ToList());
        foreach (var (pack, blobs) in indexed)
        {
            if (!stored.TryGetValue(pack, out long size))
            {
                _problems.Enqueue(new CheckProblem(PackPath(pack), $"pack is missing but the index names {blobs.Count} blob(s) in it"));
            }
            else if (blobs.Max(b => b.Offset + b.Length) > size)
            {
                _problems.Enqueue(new CheckProblem(PackPath(pack), $"pack is truncated: {size} bytes, but the index has blobs up to byte {blobs.Max(b => b.Offset + b.Length)}"));
            }
        }

        foreach (var pack in stored.Keys.Where(p => !indexed.ContainsKey(p)))
        {
            _problems.Enqueue(new CheckProblem(PackPath(pack), "pack is not referenced by any index (left by an interrupted backup; 'haven repair index' indexes it, 'haven prune' removes it)", IsError: false));
        }

        OnPhase?.Invoke("checking snapshots and trees");
        var snapshots = await repo.LoadSnapshotsAsync(ct, (id, e) => _problems.Enqueue(new CheckProblem($"snapshots/{id}", e.Message))).ConfigureAwait(false);
        var seenTrees = new ConcurrentDictionary<ObjectId, byte>();
        foreach (var (id, snapshot) in snapshots)
        {
            await CheckTreeAsync(snapshot.TreeId, $"snapshot {id.Short}", seenTrees, ct).ConfigureAwait(false);
        }

        int packsRead = 0;
        long blobsRead = 0;
        if (options.ReadData)
        {
            var selected = SelectPacks(stored.Keys.Order().ToList());
            OnPhase?.Invoke($"reading {selected.Count} pack(s)");
            await Parallel.ForEachAsync(selected, new ParallelOptions { MaxDegreeOfParallelism = Math.Max(2, Environment.ProcessorCount), CancellationToken = ct }, async (pack, token) =>
            {
                long n = await ReadPackAsync(pack, indexed.GetValueOrDefault(pack), token).ConfigureAwait(false);
                Interlocked.Add(ref blobsRead, n);
                Interlocked.Increment(ref packsRead);
            }).ConfigureAwait(false);
        }

        return new CheckResult(_problems.ToArray(), snapshots.Count, seenTrees.Count, stored.Count, packsRead, blobsRead);
    }

    private static string PackPath(ObjectId pack) => StoreLayout.PathOf(new StoreHandle(FileKind.Pack, pack.ToString()));

    private List<ObjectId> SelectPacks(List<ObjectId> packs)
    {
        var subset = options.ReadDataSubset;
        if (string.IsNullOrEmpty(subset))
        {
            return packs;
        }

        if (subset.EndsWith('%') && double.TryParse(subset[..^1], System.Globalization.CultureInfo.InvariantCulture, out double percent) && percent > 0 && percent <= 100)
        {
            int count = (int)Math.Ceiling(packs.Count * percent / 100);
            return packs.OrderBy(_ => RandomNumberGenerator.GetInt32(int.MaxValue)).Take(count).ToList();
        }

        var parts = subset.Split('/');
        if (parts.Length == 2 && int.TryParse(parts[0], out int n) && int.TryParse(parts[1], out int m) && m > 0 && n >= 1 && n <= m)
        {
            // Group by the pack id's first byte, so that n/m for n = 1..m covers every pack exactly once.
            return packs.Where(p => (p.ToArray()[0] % m) == n - 1).ToList();
        }

        throw new HavenException(ErrorCode.Usage, $"--read-data-subset '{subset}' is not 'n/m' (1 <= n <= m) or 'p%' (0 < p <= 100)");
    }

    private async Task CheckTreeAsync(ObjectId treeId, string owner, ConcurrentDictionary<ObjectId, byte> seen, CancellationToken ct)
    {
        if (!seen.TryAdd(treeId, 0))
        {
            return;
        }

        List<Node> nodes;
        try
        {
            nodes = await repo.LoadTreeAsync(treeId, ct).ConfigureAwait(false);
        }
        catch (HavenException e)
        {
            _problems.Enqueue(new CheckProblem($"tree {treeId}", $"{e.Message} (referenced by {owner})"));
            return;
        }

        var subtrees = new List<(ObjectId, string)>();
        foreach (var node in nodes)
        {
            if (node.Type == FileType.Directory)
            {
                if (node.Subtree is { } sub)
                {
                    subtrees.Add((sub, $"{owner}/{node.DisplayName}"));
                }
                else
                {
                    _problems.Enqueue(new CheckProblem($"tree {treeId}", $"directory '{node.DisplayName}' has no subtree (in {owner})"));
                }
            }
            else if (node.Content is { } content)
            {
                foreach (var id in content)
                {
                    if (!repo.Index.Contains(id))
                    {
                        _problems.Enqueue(new CheckProblem($"blob {id}", $"data of '{owner}/{node.DisplayName}' is not in any index (the file cannot be restored)"));
                    }
                }
            }
        }

        await Parallel.ForEachAsync(subtrees, new ParallelOptions { MaxDegreeOfParallelism = 4, CancellationToken = ct },
            async (s, token) => await CheckTreeAsync(s.Item1, s.Item2, seen, token).ConfigureAwait(false)).ConfigureAwait(false);
    }

    private async Task<long> ReadPackAsync(ObjectId pack, List<PackedBlob>? indexedBlobs, CancellationToken ct)
    {
        var handle = new StoreHandle(FileKind.Pack, pack.ToString());
        string path = StoreLayout.PathOf(handle);
        byte[] bytes;
        try
        {
            bytes = await repo.Store.GetAsync(handle, ct).ConfigureAwait(false);
        }
        catch (StoreException e)
        {
            _problems.Enqueue(new CheckProblem(path, $"cannot be read: {e.Message}"));
            return 0;
        }

        if (!SHA256.HashData(bytes).AsSpan().SequenceEqual(pack.ToArray()))
        {
            _problems.Enqueue(new CheckProblem(path, "content does not match its name (SHA-256): the pack is damaged"));
        }

        List<PackedBlob> header;
        try
        {
            using var memory = new PackBytesStore(bytes);
            header = await PackFormat.ReadHeaderAsync(memory, repo.Aead, pack.ToString(), bytes.Length, ct).ConfigureAwait(false);
        }
        catch (HavenException e)
        {
            _problems.Enqueue(new CheckProblem(path, e.Message.Replace($"pack {path} is damaged: ", "", StringComparison.Ordinal)));
            header = indexedBlobs ?? [];
        }

        if (indexedBlobs is not null)
        {
            var inHeader = header.Select(b => (b.Id, b.Offset, b.Length)).ToHashSet();
            foreach (var b in indexedBlobs.Where(b => !inHeader.Contains((b.Id, b.Offset, b.Length))))
            {
                _problems.Enqueue(new CheckProblem(path, $"the index places blob {b.Id.Short} at offset {b.Offset}, but the pack header does not"));
            }
        }

        long read = 0;
        foreach (var blob in header)
        {
            if (blob.Offset + blob.Length > bytes.Length)
            {
                _problems.Enqueue(new CheckProblem(path, $"blob {blob.Id.Short} reaches past the end of the pack"));
                continue;
            }

            var plain = new byte[blob.RawLength];
            if (!repo.Codec.TryDecode(blob, bytes.AsSpan((int)blob.Offset, blob.Length), plain))
            {
                _problems.Enqueue(new CheckProblem(path, $"blob {blob.Id.Short} at offset {blob.Offset} is damaged (fails authentication or decompression)"));
                continue;
            }

            if (repo.Key.BlobId(plain) != blob.Id)
            {
                _problems.Enqueue(new CheckProblem(path, $"blob {blob.Id.Short} at offset {blob.Offset} does not hash to its id"));
                continue;
            }

            read++;
        }

        return read;
    }
}
