using System.Buffers.Binary;
using System.Security.Cryptography;
using Haven.Core;
using Haven.Repository.Crypto;
using Haven.Repository.Model;
using Haven.Repository.Native;

namespace Haven.Repository.Packs;

/// <summary>One blob's entry in a pack header or an index: where its stored bytes are and what they hold.</summary>
public readonly record struct PackedBlob(ObjectId Id, BlobType Type, BlobFlags Flags, long Offset, int Length, int RawLength);

/// <summary>
/// Pack files (normative: docs/design/repository-format.md, "Packs"):
/// <c>blob* ‖ sealed header ‖ header length (uint32 LE)</c>. Each blob is sealed alone with associated data
/// <c>type ‖ id</c>, so a blob cannot be moved to another id or type unnoticed. The header lists, in order,
/// type, flags, stored length, plaintext length and id of every blob; offsets follow from the lengths.
/// A pack is named by the SHA-256 of its bytes, so a store can verify it without keys.
/// </summary>
public static class PackFormat
{
    public static ReadOnlySpan<byte> HeaderMagic => "HVNP"u8;

    public const byte HeaderVersion = 1;

    /// <summary>Bytes per header entry: type, flags, length, raw length, id.</summary>
    public const int EntrySize = 1 + 1 + 4 + 4 + ObjectId.Size;

    public static readonly byte[] HeaderAssociatedData = "haven pack header v1"u8.ToArray();

    /// <summary>More than this many entries is damage: 2^20 blobs of the minimum size would not fit a pack.</summary>
    public const int MaxEntries = 1 << 20;

    /// <summary>The end of a pack after its blobs: the sealed header listing <paramref name="blobs"/>, then its length.</summary>
    public static byte[] SealTrailer(Aead aead, IReadOnlyList<PackedBlob> blobs)
    {
        var header = new WireWriter(9 + (blobs.Count * EntrySize));
        header.Raw(HeaderMagic);
        header.Byte(HeaderVersion);
        header.UInt32((uint)blobs.Count);
        foreach (var b in blobs)
        {
            header.Byte((byte)b.Type);
            header.Byte((byte)b.Flags);
            header.UInt32((uint)b.Length);
            header.UInt32((uint)b.RawLength);
            header.Id(b.Id);
        }

        var sealedHeader = aead.Seal(header.WrittenSpan, HeaderAssociatedData);
        var trailer = new byte[sealedHeader.Length + 4];
        sealedHeader.CopyTo(trailer, 0);
        BinaryPrimitives.WriteUInt32LittleEndian(trailer.AsSpan(sealedHeader.Length), (uint)sealedHeader.Length);
        return trailer;
    }

    public static void BlobAssociatedData(BlobType type, ObjectId id, Span<byte> destination)
    {
        destination[0] = (byte)type;
        id.CopyTo(destination[1..]);
    }

    /// <summary>Parses a decrypted header; throws <see cref="MalformedDataException"/>.</summary>
    public static List<PackedBlob> ParseHeader(ReadOnlySpan<byte> header, long headerOffset)
    {
        var r = new WireReader(header);
        if (!r.Raw(4).SequenceEqual(HeaderMagic))
        {
            WireReader.Fail("pack header magic is wrong");
        }

        byte version = r.Byte();
        if (version != HeaderVersion)
        {
            WireReader.Fail($"pack header version {version} is unknown");
        }

        uint count = r.UInt32();
        if (count > MaxEntries || (long)count * EntrySize != r.Remaining)
        {
            WireReader.Fail($"pack header claims {count} entries but has {r.Remaining} bytes of entries");
        }

        var blobs = new List<PackedBlob>((int)count);
        long offset = 0;
        for (int i = 0; i < count; i++)
        {
            var type = (BlobType)r.Byte();
            var flags = (BlobFlags)r.Byte();
            uint length = r.UInt32();
            uint raw = r.UInt32();
            var id = r.Id();
            if (type is not (BlobType.Data or BlobType.Tree) || (flags & ~BlobFlags.Zstd) != 0 || length < Aead.Overhead || length > int.MaxValue || raw > int.MaxValue)
            {
                WireReader.Fail($"pack header entry {i} is invalid");
            }

            blobs.Add(new PackedBlob(id, type, flags, offset, (int)length, (int)raw));
            offset += length;
        }

        if (offset != headerOffset)
        {
            WireReader.Fail($"pack header entries cover {offset} bytes but the header starts at {headerOffset}");
        }

        return blobs;
    }

    /// <summary>Reads and decrypts the header at the end of a pack, given the pack's total size.</summary>
    public static async Task<List<PackedBlob>> ReadHeaderAsync(Haven.Storage.IStore store, Aead aead, string packName, long packSize, CancellationToken ct)
    {
        var handle = new Haven.Storage.StoreHandle(Haven.Storage.FileKind.Pack, packName);
        string display = Haven.Storage.StoreLayout.PathOf(handle);
        if (packSize < 4 + Aead.Overhead)
        {
            throw new HavenException(ErrorCode.Corrupt, $"pack {display} is truncated ({packSize} bytes)");
        }

        // Read the tail in one request when the header is small (the common case), else two.
        int guess = (int)Math.Min(packSize, 64 * 1024);
        var tail = new byte[guess];
        await store.ReadRangeAsync(handle, packSize - guess, tail, ct).ConfigureAwait(false);
        uint headerLength = BinaryPrimitives.ReadUInt32LittleEndian(tail.AsSpan(guess - 4));
        if (headerLength < Aead.Overhead || headerLength > packSize - 4)
        {
            throw new HavenException(ErrorCode.Corrupt, $"pack {display} is damaged: header length {headerLength} is impossible for a {packSize}-byte pack");
        }

        byte[] sealedHeader;
        if (headerLength + 4 <= guess)
        {
            sealedHeader = tail.AsSpan(guess - 4 - (int)headerLength, (int)headerLength).ToArray();
        }
        else
        {
            sealedHeader = new byte[headerLength];
            await store.ReadRangeAsync(handle, packSize - 4 - headerLength, sealedHeader, ct).ConfigureAwait(false);
        }

        var header = aead.TryOpen(sealedHeader, HeaderAssociatedData)
            ?? throw new HavenException(ErrorCode.Corrupt, $"pack {display} is damaged: its header fails authentication", "run 'haven check --read-data'");
        try
        {
            return ParseHeader(header, packSize - 4 - headerLength);
        }
        catch (MalformedDataException e)
        {
            throw new HavenException(ErrorCode.Corrupt, $"pack {display} is damaged: {e.Message}", "run 'haven check --read-data'", e);
        }
    }
}

/// <summary>
/// The buffers one blob encoding needs, kept by the caller across encodings: they grow to the largest blob seen
/// (at most twice the maximum chunk) instead of being rented per blob, which with chunks of 0.5 to 8 MiB spread
/// over every power-of-two size class of a pool. Not thread-safe: one encoder at a time.
/// </summary>
public sealed class EncodeScratch
{
    internal byte[] Compressed = [];
    internal byte[] Output = [];

    internal static byte[] Grow(ref byte[] buffer, int length)
    {
        if (buffer.Length < length)
        {
            buffer = GC.AllocateUninitializedArray<byte>(length);
        }

        return buffer;
    }
}

/// <summary>Turns blob plaintext into stored bytes and back: optional zstd, then AES-256-GCM.</summary>
public sealed class BlobCodec
{
    private readonly Aead _aead;

    public BlobCodec(Aead aead, int compressionLevel)
    {
        _aead = aead;
        CompressionLevel = compressionLevel;
    }

    public int CompressionLevel { get; }

    /// <summary>Probe size for the incompressibility test: compressing 64 KiB at level 1 costs ~0.15 ms.</summary>
    private const int ProbeSize = 64 * 1024;

    /// <summary>
    /// Encodes a blob into <paramref name="scratch"/>'s output buffer (valid until the scratch is used again).
    /// Compression is skipped when a probe of the first 64 KiB saves less than 3 %, or when the result would not be
    /// smaller.
    /// </summary>
    public (byte[] Buffer, int Length, BlobFlags Flags) Encode(BlobType type, ObjectId id, ReadOnlySpan<byte> plaintext, EncodeScratch scratch)
    {
        Span<byte> aad = stackalloc byte[1 + ObjectId.Size];
        PackFormat.BlobAssociatedData(type, id, aad);
        ReadOnlySpan<byte> body = plaintext;
        var flags = BlobFlags.None;
        if (CompressionLevel > 0 && plaintext.Length >= 128 && LooksCompressible(plaintext))
        {
            var compressed = EncodeScratch.Grow(ref scratch.Compressed, Zstd.CompressBound(plaintext.Length));
            int compressedLength = Zstd.Compress(plaintext, compressed, CompressionLevel);
            if (compressedLength < plaintext.Length)
            {
                body = compressed.AsSpan(0, compressedLength);
                flags = BlobFlags.Zstd;
            }
        }

        int length = body.Length + Aead.Overhead;
        var output = EncodeScratch.Grow(ref scratch.Output, length);
        _aead.Seal(body, aad, output.AsSpan(0, length));
        return (output, length, flags);
    }

    private static bool LooksCompressible(ReadOnlySpan<byte> data)
    {
        if (data.Length <= ProbeSize * 2)
        {
            return true; // small blobs: compress outright, the result-size check decides
        }

        var probe = data[..ProbeSize];
        var scratch = BufferPool.Large.Rent(Zstd.CompressBound(ProbeSize));
        try
        {
            int n = Zstd.Compress(probe, scratch, 1);
            return n < ProbeSize * 97 / 100;
        }
        finally
        {
            BufferPool.Large.Return(scratch);
        }
    }

    /// <summary>Decodes stored bytes into <paramref name="destination"/> (exactly RawLength long). Returns false on damage.</summary>
    public bool TryDecode(in PackedBlob blob, ReadOnlySpan<byte> stored, Span<byte> destination)
    {
        Span<byte> aad = stackalloc byte[1 + ObjectId.Size];
        PackFormat.BlobAssociatedData(blob.Type, blob.Id, aad);
        if (stored.Length < Aead.Overhead)
        {
            return false;
        }

        int bodyLength = stored.Length - Aead.Overhead;
        if ((blob.Flags & BlobFlags.Zstd) == 0)
        {
            return bodyLength == destination.Length && _aead.TryOpen(stored, aad, destination);
        }

        var body = BufferPool.Large.Rent(bodyLength);
        try
        {
            return _aead.TryOpen(stored, aad, body.AsSpan(0, bodyLength)) && Zstd.TryDecompress(body.AsSpan(0, bodyLength), destination);
        }
        finally
        {
            BufferPool.Large.Return(body);
        }
    }
}

/// <summary>
/// Accumulates encoded blobs into one pack in memory. Not thread-safe: the owner (<see cref="BlobWriter"/> or the
/// pruner) serialises.
/// </summary>
public sealed class PackBuilder : IPackBuilder
{
    private readonly Aead _aead;
    private readonly List<PackedBlob> _blobs = [];
    private byte[] _buffer;
    private int _length;

    public PackBuilder(Aead aead, int capacity)
        : this(aead, new byte[capacity])
    {
    }

    /// <summary>Builds into <paramref name="buffer"/> (grown if a pack needs more); see <see cref="Buffer"/>.</summary>
    public PackBuilder(Aead aead, byte[] buffer)
    {
        _aead = aead;
        _buffer = buffer;
    }

    /// <summary>The buffer holding the pack; the owner may reuse it once the bytes from <see cref="Finish"/> are stored.</summary>
    public byte[] Buffer => _buffer;

    public int Length => _length;

    long IPackBuilder.Length => _length;

    public int Count => _blobs.Count;

    public IReadOnlyList<PackedBlob> Blobs => _blobs;

    public void Add(ObjectId id, BlobType type, BlobFlags flags, ReadOnlySpan<byte> stored, int rawLength)
    {
        if (_length + stored.Length > _buffer.Length)
        {
            Array.Resize(ref _buffer, Math.Max(_buffer.Length * 2, _length + stored.Length));
        }

        stored.CopyTo(_buffer.AsSpan(_length));
        _blobs.Add(new PackedBlob(id, type, flags, _length, stored.Length, rawLength));
        _length += stored.Length;
    }

    public void RemoveBlobs(IReadOnlySet<ObjectId> ids)
    {
        var kept = new List<PackedBlob>(_blobs.Count);
        int at = 0;
        foreach (var blob in _blobs)
        {
            if (!ids.Contains(blob.Id))
            {
                System.Buffer.BlockCopy(_buffer, (int)blob.Offset, _buffer, at, blob.Length);
                kept.Add(blob with { Offset = at });
                at += blob.Length;
            }
        }

        _blobs.Clear();
        _blobs.AddRange(kept);
        _length = at;
    }

    /// <summary>Appends the header and trailer; returns the pack's bytes and its name (SHA-256 of the bytes).</summary>
    public (ReadOnlyMemory<byte> Bytes, ObjectId Name) Finish()
    {
        var trailer = PackFormat.SealTrailer(_aead, _blobs);
        int total = _length + trailer.Length;
        if (total > _buffer.Length)
        {
            Array.Resize(ref _buffer, total);
        }

        trailer.CopyTo(_buffer.AsSpan(_length));
        var bytes = new ReadOnlyMemory<byte>(_buffer, 0, total);
        var name = new ObjectId(SHA256.HashData(bytes.Span));
        return (bytes, name);
    }
}
