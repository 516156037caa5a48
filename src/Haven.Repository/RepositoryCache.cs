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
    private readonly string _root;

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
