using System.Security.Cryptography;
using Haven.Core;
using Haven.Storage;

namespace Haven.Repository;

/// <summary>
/// A local copy of the repository files every command reads: index files, snapshot files and packs of tree blobs
/// (<c>&lt;cache root&gt;/&lt;repository id&gt;/{index,snapshots,data}/&lt;name&gt;</c>). All of them are write-once and
/// named by the SHA-256 of their bytes, so a cached file is valid exactly when its hash matches its name; a damaged
/// cache entry is dropped and fetched again. Files the store no longer has are removed by <see cref="Prune"/>.
/// Thread-safe; writes go to a temporary name and are renamed into place.
/// </summary>
public sealed class RepositoryCache
{
    /// <summary>Tree packs kept in memory once read: a backup visits every directory's tree, many per pack.</summary>
    private const long MaxHotBytes = 256L * 1024 * 1024;

    private readonly string _root;
    private readonly System.Collections.Concurrent.ConcurrentDictionary<string, Lazy<Task<byte[]>>> _hotPacks = new();
    private long _hotBytes;

    public RepositoryCache(string cacheRoot, string repositoryId)
    {
        _root = Path.Combine(cacheRoot, repositoryId);
    }

    public string Directory => _root;

    private string PathOf(FileKind kind, string name) => Path.Combine(_root, kind switch
    {
        FileKind.Index => "index",
        FileKind.Snapshot => "snapshots",
        FileKind.Pack => "data",
        _ => throw new ArgumentOutOfRangeException(nameof(kind), $"{kind} files are not cached"),
    }, name);

    public static bool IsCached(FileKind kind) => kind is FileKind.Index or FileKind.Snapshot;

    /// <summary>Returns the file from the cache, or fetches it through <paramref name="fetch"/> and keeps a copy.</summary>
    public async Task<byte[]> GetAsync(FileKind kind, string name, Func<Task<byte[]>> fetch)
    {
        var path = PathOf(kind, name);
        var cached = TryRead(path, name);
        if (cached is not null)
        {
            return cached;
        }

        var bytes = await fetch().ConfigureAwait(false);
        Put(kind, name, bytes);
        return bytes;
    }

    /// <summary>
    /// A tree pack, read from disk (and verified) at most once per process, or fetched through <paramref name="fetch"/>
    /// and kept. Concurrent callers for the same pack share one load.
    /// </summary>
    public Task<byte[]> GetPackAsync(string name, Func<Task<byte[]>> fetch)
    {
        return _hotPacks.GetOrAdd(name, n => new Lazy<Task<byte[]>>(() => LoadPackAsync(n, fetch))).Value;
    }

    private async Task<byte[]> LoadPackAsync(string name, Func<Task<byte[]>> fetch)
    {
        byte[] bytes;
        try
        {
            bytes = await GetAsync(FileKind.Pack, name, fetch).ConfigureAwait(false);
        }
        catch
        {
            _hotPacks.TryRemove(name, out _); // the next caller tries again
            throw;
        }

        if (Interlocked.Add(ref _hotBytes, bytes.Length) > MaxHotBytes)
        {
            // Rare (hundreds of MiB of trees): start over rather than track recency.
            _hotPacks.Clear();
            Interlocked.Exchange(ref _hotBytes, 0);
        }

        return bytes;
    }

    /// <summary>Keeps a copy of a file this process just wrote, so the next command need not download it.</summary>
    public void Put(FileKind kind, string name, ReadOnlySpan<byte> bytes)
    {
        var path = PathOf(kind, name);
        try
        {
            System.IO.Directory.CreateDirectory(Path.GetDirectoryName(path)!);
            var temp = path + "." + Guid.NewGuid().ToString("N")[..8] + ".tmp";
            File.WriteAllBytes(temp, bytes.ToArray());
            File.Move(temp, path, overwrite: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // A cache that cannot be written only costs speed.
        }
    }

    private static byte[]? TryRead(string path, string name)
    {
        try
        {
            if (!File.Exists(path))
            {
                return null;
            }

            var bytes = File.ReadAllBytes(path);
            if (ObjectId.TryParse(name, out var id) && SHA256.HashData(bytes).AsSpan().SequenceEqual(id.ToArray()))
            {
                return bytes;
            }

            File.Delete(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
        }

        return null;
    }

    /// <summary>Removes cached files of <paramref name="kind"/> that are not in <paramref name="existing"/> (deleted by prune or forget).</summary>
    public void Prune(FileKind kind, IReadOnlySet<string> existing)
    {
        try
        {
            var dir = Path.GetDirectoryName(PathOf(kind, new string('0', 64)))!;
            if (!System.IO.Directory.Exists(dir))
            {
                return;
            }

            foreach (var file in System.IO.Directory.GetFiles(dir))
            {
                var name = Path.GetFileName(file);
                if (!existing.Contains(name))
                {
                    File.Delete(file);
                }
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
        }
    }
}
