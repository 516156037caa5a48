using System.Collections.Concurrent;
using Haven.Core;
using Haven.Core.Posix;
using Microsoft.Win32.SafeHandles;

namespace Haven.Images;

/// <summary>
/// An image snapshot as a volume to read (and, with an overlay, to write) at any offset, without restoring it.
/// Reads come from the repository block by block, each assembled from the storage chunks that hold it and checked
/// against its checksum. Decrypted blocks are kept in a cache (by default 64 MiB): the
/// blocks a client reads again and again, such as a filesystem's superblock, group descriptors, bitmaps, inode
/// tables and directories, stay there. Writes go to a temporary copy-on-write overlay file that is deleted when the
/// volume is disposed. The stored snapshot never changes.
/// </summary>
public sealed class ImageVolume : IDisposable
{
    private readonly Repository.Repository _repo;
    private readonly BlockMap _map;
    private readonly ConcurrentDictionary<long, (byte[] Data, long Used)> _cache = new();
    private readonly int _cacheBlocks;
    private readonly SafeFileHandle? _overlay;
    private readonly string? _overlayPath;
    private readonly bool[]? _written;
    private readonly Lock _writeLock = new();

    /// <summary>Storage chunks last read, most recent last.</summary>
    private readonly List<(ObjectId Id, byte[] Data)> _chunks = [];
    private const int ChunksKept = 8;
    private long _clock;

    public ImageVolume(Repository.Repository repo, BlockMap map, string? overlayFolder, long cacheBytes = 64L << 20)
    {
        _repo = repo;
        _map = map;
        _cacheBlocks = (int)Math.Max(16, cacheBytes / map.BlockSize);
        if (overlayFolder is not null)
        {
            _overlayPath = Path.Combine(overlayFolder, $"haven-overlay-{Environment.ProcessId}-{Guid.NewGuid():N}.img");
            using (var created = Posix.CreateFile(PosixPath.FromString(_overlayPath), 0x180, truncate: true))
            {
                Posix.FTruncate(created, map.ImageSize);
            }

            _overlay = Posix.OpenWrite(PosixPath.FromString(_overlayPath));
            _written = new bool[map.Entries.LongLength];
        }
    }

    public long Size => _map.ImageSize;

    public bool Writable => _overlay is not null;

    /// <summary>Fills <paramref name="buffer"/> with the bytes at <paramref name="offset"/>.</summary>
    public async Task ReadAsync(long offset, Memory<byte> buffer, CancellationToken ct)
    {
        CheckRange(offset, buffer.Length);
        foreach (var (index, within, done, n) in Segments(offset, buffer.Length))
        {
            var block = await BlockAsync(index, ct).ConfigureAwait(false);
            if (block is null)
            {
                buffer.Span.Slice(done, n).Clear();
            }
            else
            {
                block.AsSpan(within, n).CopyTo(buffer.Span[done..]);
            }
        }
    }

    /// <summary>Writes into the overlay: a block written for the first time is first copied there whole.</summary>
    public async Task WriteAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken ct)
    {
        if (_overlay is null)
        {
            throw new HavenException(ErrorCode.Usage, "the export is read-only");
        }

        CheckRange(offset, data.Length);
        foreach (var (index, _, done, n) in Segments(offset, data.Length))
        {
            if (!Volatile.Read(ref _written![index]))
            {
                var original = await BlockAsync(index, ct).ConfigureAwait(false);
                lock (_writeLock)
                {
                    if (!_written[index])
                    {
                        if (original is not null)
                        {
                            Posix.PWriteAll(_overlay, original, index * _map.BlockSize);
                        }

                        Volatile.Write(ref _written[index], true);
                        _cache.TryRemove(index, out _);
                    }
                }
            }

            Posix.PWriteAll(_overlay, data.Span.Slice(done, n), offset + done);
        }
    }

    /// <summary>Splits [offset, offset + length) at block edges: each piece's block, where it starts in the block and in the request, and its length.</summary>
    private IEnumerable<(long Index, int Within, int Done, int Count)> Segments(long offset, int length)
    {
        int done = 0;
        while (done < length)
        {
            long at = offset + done;
            long index = at / _map.BlockSize;
            int within = (int)(at - (index * _map.BlockSize));
            int n = Math.Min(length - done, _map.LengthOf(index) - within);
            yield return (index, within, done, n);
            done += n;
        }
    }

    /// <summary>A block's bytes, or null when it reads as zeros.</summary>
    private async Task<byte[]?> BlockAsync(long index, CancellationToken ct)
    {
        if (_written is not null && Volatile.Read(ref _written[index]))
        {
            var fromOverlay = new byte[_map.LengthOf(index)];
            Posix.PRead(_overlay!, fromOverlay, index * _map.BlockSize);
            return fromOverlay;
        }

        var entry = _map.Entries[index];
        if (entry.Kind != BlockKind.Data)
        {
            return null;
        }

        if (_cache.TryGetValue(index, out var cached))
        {
            _cache[index] = (cached.Data, Interlocked.Increment(ref _clock));
            return cached.Data;
        }

        // The block's bytes, from the storage chunks that hold them.
        long start = index * _map.BlockSize;
        var data = new byte[_map.LengthOf(index)];
        for (int k = _map.FirstPlacementEndingAfter(start); k < _map.Placements.Length && _map.Placements[k].Offset < start + data.Length; k++)
        {
            var p = _map.Placements[k];
            var chunk = await ChunkAsync(p.Id, ct).ConfigureAwait(false);
            if (chunk.Length < (long)p.Skip + p.Length)
            {
                throw new HavenException(ErrorCode.Corrupt, $"block {index}: chunk {p.Id.Short} holds {chunk.Length} bytes, fewer than its placement needs");
            }

            var piece = p.Clip(start, start + data.Length);
            chunk.AsSpan(piece.Skip, piece.Length).CopyTo(data.AsSpan((int)(piece.Offset - start)));
        }

        if (_repo.Key.BlobId(data) != entry.Id)
        {
            throw new HavenException(ErrorCode.Corrupt, $"block {index} (bytes {start}-{start + data.Length - 1}) does not match its checksum {entry.Id.Short}");
        }

        _cache[index] = (data, Interlocked.Increment(ref _clock));
        if (_cache.Count > _cacheBlocks)
        {
            // Evict the least recently used quarter at once, so eviction is rare.
            foreach (var old in _cache.OrderBy(c => c.Value.Used).Take(_cacheBlocks / 4).ToList())
            {
                _cache.TryRemove(old.Key, out _);
            }
        }

        return data;
    }

    /// <summary>A storage chunk, decrypted; the last few are kept, as a chunk holds several blocks read one after another.</summary>
    private async Task<byte[]> ChunkAsync(ObjectId id, CancellationToken ct)
    {
        lock (_chunks)
        {
            var hit = _chunks.FindIndex(c => c.Id == id);
            if (hit >= 0)
            {
                var found = _chunks[hit];
                _chunks.RemoveAt(hit);
                _chunks.Add(found);
                return found.Data;
            }
        }

        var data = await _repo.ReadBlobAsync(id, ct).ConfigureAwait(false);
        lock (_chunks)
        {
            _chunks.Add((id, data));
            if (_chunks.Count > ChunksKept)
            {
                _chunks.RemoveAt(0);
            }
        }

        return data;
    }

    private void CheckRange(long offset, int length)
    {
        if (offset < 0 || length < 0 || offset + length > _map.ImageSize)
        {
            throw new ArgumentOutOfRangeException(nameof(offset), $"bytes {offset}+{length} are outside the image of {_map.ImageSize} bytes");
        }
    }

    public void Dispose()
    {
        _overlay?.Dispose();
        if (_overlayPath is not null)
        {
            File.Delete(_overlayPath);
        }
    }
}
