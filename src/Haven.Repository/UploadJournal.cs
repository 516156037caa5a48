using System.Diagnostics;
using Haven.Core;
using Haven.Repository.Index;
using Haven.Repository.Packs;
using Haven.Storage;

namespace Haven.Repository;

/// <summary>
/// Remembers, on the local disk, which packs a writer has uploaded but not yet indexed, so that the next run after a
/// crash (kill -9, power cut, lost network) indexes them instead of uploading their blobs again. One file per
/// process in the cache folder of the repository: <c>&lt;cache&gt;/&lt;repository id&gt;/journal-&lt;pid&gt;-&lt;random&gt;</c>,
/// one pack id per line. The file is removed once every listed pack is indexed. Recovery only touches journals of
/// processes that no longer run; indexing a pack twice would be harmless anyway (readers keep one location).
/// </summary>
public sealed class UploadJournal : IDisposable
{
    private readonly string _path;
    private readonly Lock _lock = new();
    private StreamWriter? _writer;

    private UploadJournal(string path) => _path = path;

    /// <summary>The cache root: HAVEN_CACHE_DIR, else $XDG_CACHE_HOME/haven, else ~/.cache/haven.</summary>
    public static string DefaultCacheRoot()
    {
        if (Environment.GetEnvironmentVariable("HAVEN_CACHE_DIR") is { Length: > 0 } dir)
        {
            return dir;
        }

        var xdg = Environment.GetEnvironmentVariable("XDG_CACHE_HOME");
        return Path.Combine(string.IsNullOrEmpty(xdg) ? Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache") : xdg, "haven");
    }

    public static string DirectoryFor(string cacheRoot, Repository repo) => Path.Combine(cacheRoot, repo.Config.Id);

    /// <summary>Starts a journal for this process; returns null when the cache folder cannot be written (the backup still works).</summary>
    public static UploadJournal? TryStart(string directory)
    {
        try
        {
            Directory.CreateDirectory(directory);
            return new UploadJournal(Path.Combine(directory, $"journal-{Environment.ProcessId}-{Guid.NewGuid():N}"));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    public void Record(ObjectId pack)
    {
        lock (_lock)
        {
            try
            {
                _writer ??= new StreamWriter(new FileStream(_path, FileMode.Append, FileAccess.Write, FileShare.Read));
                _writer.WriteLine(pack.ToString());
                _writer.Flush();
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                // Losing the journal only costs re-uploading after a crash.
            }
        }
    }

    /// <summary>Everything is indexed: the journal is no longer needed.</summary>
    public void Complete()
    {
        lock (_lock)
        {
            _writer?.Dispose();
            _writer = null;
            try
            {
                File.Delete(_path);
            }
            catch (IOException)
            {
            }
        }
    }

    public void Dispose()
    {
        lock (_lock)
        {
            _writer?.Dispose();
            _writer = null;
        }
    }

    /// <summary>
    /// Indexes the packs named by journals of processes that are gone and that no index knows yet; writes one index
    /// file for them and removes those journals. Returns the number of packs recovered.
    /// </summary>
    public static async Task<int> RecoverAsync(Repository repo, string directory, CancellationToken ct)
    {
        if (!Directory.Exists(directory))
        {
            return 0;
        }

        var journals = Directory.GetFiles(directory, "journal-*").Where(f => !IsAlive(f)).ToList();
        if (journals.Count == 0)
        {
            return 0;
        }

        var packs = new HashSet<ObjectId>();
        foreach (var journal in journals.ToList())
        {
            try
            {
                foreach (var line in File.ReadLines(journal))
                {
                    if (ObjectId.TryParse(line.Trim(), out var id) && !repo.Index.ContainsPack(id))
                    {
                        packs.Add(id);
                    }
                }
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                journals.Remove(journal); // another backup starting at the same moment took it
            }
        }

        var recovered = new IndexFile();
        foreach (var pack in packs)
        {
            var handle = new StoreHandle(FileKind.Pack, pack.ToString());
            try
            {
                var stat = await repo.Store.StatAsync(handle, ct).ConfigureAwait(false);
                if (stat is null)
                {
                    continue; // never arrived, or pruned since
                }

                var blobs = await PackFormat.ReadHeaderAsync(repo.Store, repo.Aead, pack.ToString(), stat.Value.Size, ct).ConfigureAwait(false);
                recovered.Packs.Add(new IndexedPack(pack, blobs));
            }
            catch (Exception e) when (e is HavenException or StoreException)
            {
                // A damaged or unreachable pack is left for check and prune; its blobs are simply stored again.
            }
        }

        if (recovered.Packs.Count > 0)
        {
            await repo.SaveSealedAsync(FileKind.Index, recovered.Encode(), ct).ConfigureAwait(false);
            foreach (var p in recovered.Packs)
            {
                repo.Index.Add(p);
            }
        }

        foreach (var journal in journals)
        {
            try
            {
                File.Delete(journal);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
            }
        }

        return recovered.Packs.Count;
    }

    private static bool IsAlive(string journalPath)
    {
        var parts = Path.GetFileName(journalPath).Split('-');
        if (parts.Length < 3 || !int.TryParse(parts[1], out int pid))
        {
            return false;
        }

        if (pid == Environment.ProcessId)
        {
            return true;
        }

        try
        {
            using var p = Process.GetProcessById(pid);
            return !p.HasExited;
        }
        catch (ArgumentException)
        {
            return false;
        }
    }
}
