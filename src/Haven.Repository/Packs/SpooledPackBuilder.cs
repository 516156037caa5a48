using System.Security.Cryptography;
using Haven.Core;
using Haven.Repository.Crypto;
using Haven.Repository.Model;
using Haven.Storage;
using Microsoft.Win32.SafeHandles;

namespace Haven.Repository.Packs;

/// <summary>What <see cref="BlobWriter"/> needs of a pack being filled, in memory or in a file.</summary>
public interface IPackBuilder
{
    /// <summary>Bytes of blobs added so far (the header comes on top).</summary>
    long Length { get; }

    int Count { get; }

    IReadOnlyList<PackedBlob> Blobs { get; }

    void Add(ObjectId id, BlobType type, BlobFlags flags, ReadOnlySpan<byte> stored, int rawLength);

    /// <summary>
    /// Takes the blobs named in <paramref name="ids"/> out of the pack before it is finished, moving the others up
    /// (a writer drops what the store's catalog says it holds already).
    /// </summary>
    void RemoveBlobs(IReadOnlySet<ObjectId> ids);
}

/// <summary>
/// Builds one pack in a temporary file instead of memory, hashing the bytes as they are written, so a 16 MiB pack
/// costs no 16 MiB buffer while it fills and uploads (the file lives in the page cache; a local store renames it
/// into place, an object store streams it). Not thread-safe: the owner serialises <see cref="Add"/>.
/// <see cref="Dispose"/> deletes the file if the store did not take it.
/// </summary>
public sealed class SpooledPackBuilder : IPackBuilder, IDisposable
{
    /// <summary>Spool file names: the prefix, the writing process id, a random part, <see cref="Suffix"/>.</summary>
    public const string Prefix = "haven-pack-";

    public const string Suffix = ".tmp";

    private readonly Aead _aead;
    private readonly SafeFileHandle _file;
    private readonly IncrementalHash _hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
    private readonly List<PackedBlob> _blobs = [];
    private long _length;
    private bool _finished;

    /// <summary>Creates a new spool file in <paramref name="folder"/> (which must exist).</summary>
    public SpooledPackBuilder(Aead aead, string folder)
    {
        _aead = aead;
        FilePath = Path.Combine(folder, $"{Prefix}{Environment.ProcessId}-{Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(8))}{Suffix}");
        try
        {
            _file = File.OpenHandle(FilePath, FileMode.CreateNew, FileAccess.ReadWrite, FileShare.Read);
        }
        catch (Exception e) when (StoreErrors.Translate(e, $"cannot create the pack spool file {FilePath}: {e.Message}") is { } translated)
        {
            throw translated;
        }
    }

    /// <summary>The spool file; after <see cref="Finish"/> it holds the whole pack.</summary>
    public string FilePath { get; }

    public long Length => _length;

    public int Count => _blobs.Count;

    public IReadOnlyList<PackedBlob> Blobs => _blobs;

    public void Add(ObjectId id, BlobType type, BlobFlags flags, ReadOnlySpan<byte> stored, int rawLength)
    {
        ObjectDisposedException.ThrowIf(_finished, this);
        Write(stored);
        _blobs.Add(new PackedBlob(id, type, flags, _length, stored.Length, rawLength));
        _length += stored.Length;
    }

    public void RemoveBlobs(IReadOnlySet<ObjectId> ids)
    {
        ObjectDisposedException.ThrowIf(_finished, this);
        // Every kept blob moves towards the start (or stays), so reading it before writing it is safe; the hash
        // starts over, since it covered the removed bytes.
        _hash.GetHashAndReset();
        var kept = new List<PackedBlob>(_blobs.Count);
        long at = 0;
        try
        {
            foreach (var blob in _blobs)
            {
                if (ids.Contains(blob.Id))
                {
                    continue;
                }

                var buffer = BufferPool.Large.Rent(blob.Length);
                try
                {
                    var span = buffer.AsSpan(0, blob.Length);
                    for (int done = 0; done < span.Length;)
                    {
                        int n = RandomAccess.Read(_file, span[done..], blob.Offset + done);
                        if (n == 0)
                        {
                            throw new IOException($"the spool file ended at {blob.Offset + done} bytes, inside a blob");
                        }

                        done += n;
                    }

                    if (blob.Offset != at)
                    {
                        RandomAccess.Write(_file, span, at);
                    }

                    _hash.AppendData(span);
                }
                finally
                {
                    BufferPool.Large.Return(buffer);
                }

                kept.Add(blob with { Offset = at });
                at += blob.Length;
            }

            RandomAccess.SetLength(_file, at);
        }
        catch (IOException e)
        {
            throw SpoolError(e);
        }

        _blobs.Clear();
        _blobs.AddRange(kept);
        _length = at;
    }

    /// <summary>Appends the header and trailer and closes the file; returns the pack's name and size.</summary>
    public (ObjectId Name, long Size) Finish()
    {
        ObjectDisposedException.ThrowIf(_finished, this);
        var trailer = PackFormat.SealTrailer(_aead, _blobs);
        Write(trailer);
        _finished = true;
        _file.Dispose();
        return (new ObjectId(_hash.GetHashAndReset()), _length + trailer.Length);
    }

    private void Write(ReadOnlySpan<byte> bytes)
    {
        try
        {
            RandomAccess.Write(_file, bytes, _length); // the trailer, too, starts where the blobs end
        }
        catch (IOException e)
        {
            throw SpoolError(e);
        }

        _hash.AppendData(bytes);
    }

    private StoreException SpoolError(IOException e) =>
        new(StoreErrors.Classify(e), $"cannot write the pack spool file {FilePath}: {e.Message}", e);

    public void Dispose()
    {
        _finished = true;
        _file.Dispose();
        _hash.Dispose();
        try
        {
            File.Delete(FilePath);
        }
        catch (IOException)
        {
            // Left for the next writer's sweep of dead processes' spool files.
        }
        catch (UnauthorizedAccessException)
        {
        }
    }

    /// <summary>
    /// Deletes spool files in <paramref name="folder"/> left by processes that no longer run (a backup killed with
    /// kill -9). Files of running processes are left alone: they may belong to another backup at work.
    /// </summary>
    public static void SweepStale(string folder)
    {
        IEnumerable<string> files;
        try
        {
            files = Directory.EnumerateFiles(folder, Prefix + "*" + Suffix).ToList();
        }
        catch (IOException)
        {
            return;
        }

        foreach (var file in files)
        {
            var name = Path.GetFileName(file.AsSpan());
            var rest = name[Prefix.Length..];
            int dash = rest.IndexOf('-');
            if (dash <= 0 || !int.TryParse(rest[..dash], out int pid) || pid == Environment.ProcessId || Directory.Exists($"/proc/{pid}"))
            {
                continue;
            }

            try
            {
                File.Delete(file);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                // Someone else's file, or gone already.
            }
        }
    }
}
