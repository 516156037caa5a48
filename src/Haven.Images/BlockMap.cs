using System.Buffers.Binary;
using Haven.Core;

namespace Haven.Images;

/// <summary>What a block of an image holds. Persisted in block maps: never renumber.</summary>
public enum BlockKind : byte
{
    /// <summary>Stored as a data blob; its id is the block's checksum.</summary>
    Data = 0,

    /// <summary>All zeros: not stored, restored as zeros (or a hole in a sparse target).</summary>
    Zero = 1,

    /// <summary>A hole of a sparse source file: not read, not stored.</summary>
    Hole = 2,

    /// <summary>Free in the filesystem's own allocation bitmap: not read, not stored, restored as zeros.</summary>
    Free = 3,
}

/// <summary>One block: what it holds, its checksum (the blob id, for data blocks), the generation that last changed it.</summary>
public readonly record struct BlockEntry(BlockKind Kind, ObjectId Id, uint Generation);

/// <summary>How many blocks one generation changed, and when it was taken.</summary>
public readonly record struct GenerationRecord(uint Generation, long BlocksChanged, DateTimeOffset Time);

/// <summary>
/// The block map of an image snapshot (normative: docs/design/repository-format.md, "Image snapshots"): for every
/// block its kind, checksum and the generation in which it last changed, and per generation how many blocks changed.
/// <para>
/// Encoding, little-endian: magic <c>"HVNBMAP1"</c> ‖ u64 image size ‖ u32 block size ‖ u32 generation ‖ u64 block
/// count ‖ u32 history count ‖ (u32 generation ‖ u64 blocks changed ‖ i64 unix milliseconds)* ‖ per block:
/// u8 kind ‖ u32 generation ‖ (32-byte blob id, data blocks only).
/// </para>
/// </summary>
public sealed class BlockMap
{
    private static ReadOnlySpan<byte> Magic => "HVNBMAP1"u8;

    public BlockMap(long imageSize, int blockSize, uint generation, BlockEntry[] entries, IReadOnlyList<GenerationRecord> history)
    {
        if (blockSize <= 0 || imageSize < 0 || entries.LongLength != BlockCount(imageSize, blockSize))
        {
            throw new ArgumentException("the entries do not cover the image in blocks of that size");
        }

        ImageSize = imageSize;
        BlockSize = blockSize;
        Generation = generation;
        Entries = entries;
        History = history;
    }

    public long ImageSize { get; }

    public int BlockSize { get; }

    public uint Generation { get; }

    public BlockEntry[] Entries { get; }

    /// <summary>Every generation of this source up to this one, oldest first.</summary>
    public IReadOnlyList<GenerationRecord> History { get; }

    public static long BlockCount(long imageSize, int blockSize) => (imageSize + blockSize - 1) / blockSize;

    /// <summary>Bytes of block <paramref name="index"/> (the last block may be short).</summary>
    public int LengthOf(long index) => (int)Math.Min(BlockSize, ImageSize - (index * BlockSize));

    public byte[] Encode()
    {
        long dataBlocks = Entries.LongCount(e => e.Kind == BlockKind.Data);
        long length = Magic.Length + 8 + 4 + 4 + 8 + 4 + (History.Count * 20L) + (Entries.LongLength * 5) + (dataBlocks * ObjectId.Size);
        var bytes = new byte[length];
        var span = bytes.AsSpan();
        Magic.CopyTo(span);
        int at = Magic.Length;
        BinaryPrimitives.WriteInt64LittleEndian(span[at..], ImageSize);
        BinaryPrimitives.WriteInt32LittleEndian(span[(at + 8)..], BlockSize);
        BinaryPrimitives.WriteUInt32LittleEndian(span[(at + 12)..], Generation);
        BinaryPrimitives.WriteInt64LittleEndian(span[(at + 16)..], Entries.LongLength);
        BinaryPrimitives.WriteInt32LittleEndian(span[(at + 24)..], History.Count);
        at += 28;
        foreach (var h in History)
        {
            BinaryPrimitives.WriteUInt32LittleEndian(span[at..], h.Generation);
            BinaryPrimitives.WriteInt64LittleEndian(span[(at + 4)..], h.BlocksChanged);
            BinaryPrimitives.WriteInt64LittleEndian(span[(at + 12)..], h.Time.ToUnixTimeMilliseconds());
            at += 20;
        }

        long pos = at;
        foreach (var e in Entries)
        {
            bytes[pos] = (byte)e.Kind;
            BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan((int)pos + 1), e.Generation);
            pos += 5;
            if (e.Kind == BlockKind.Data)
            {
                e.Id.CopyTo(bytes.AsSpan((int)pos));
                pos += ObjectId.Size;
            }
        }

        return bytes;
    }

    public static BlockMap Decode(ReadOnlySpan<byte> bytes, string what)
    {
        try
        {
            if (!bytes.StartsWith(Magic))
            {
                throw Damaged(what, "it does not start with the block map's magic");
            }

            int at = Magic.Length;
            long size = BinaryPrimitives.ReadInt64LittleEndian(bytes[at..]);
            int blockSize = BinaryPrimitives.ReadInt32LittleEndian(bytes[(at + 8)..]);
            uint generation = BinaryPrimitives.ReadUInt32LittleEndian(bytes[(at + 12)..]);
            long count = BinaryPrimitives.ReadInt64LittleEndian(bytes[(at + 16)..]);
            int historyCount = BinaryPrimitives.ReadInt32LittleEndian(bytes[(at + 24)..]);
            at += 28;
            if (blockSize <= 0 || size < 0 || count != BlockCount(size, blockSize) || historyCount < 0 || count > bytes.Length)
            {
                throw Damaged(what, "its header does not add up");
            }

            var history = new List<GenerationRecord>(historyCount);
            for (int i = 0; i < historyCount; i++)
            {
                history.Add(new GenerationRecord(
                    BinaryPrimitives.ReadUInt32LittleEndian(bytes[at..]),
                    BinaryPrimitives.ReadInt64LittleEndian(bytes[(at + 4)..]),
                    DateTimeOffset.FromUnixTimeMilliseconds(BinaryPrimitives.ReadInt64LittleEndian(bytes[(at + 12)..]))));
                at += 20;
            }

            var entries = new BlockEntry[count];
            for (long i = 0; i < count; i++)
            {
                var kind = (BlockKind)bytes[at];
                if (kind > BlockKind.Free)
                {
                    throw Damaged(what, $"block {i} has an unknown kind {(byte)kind}");
                }

                uint gen = BinaryPrimitives.ReadUInt32LittleEndian(bytes[(at + 1)..]);
                at += 5;
                var id = ObjectId.Zero;
                if (kind == BlockKind.Data)
                {
                    id = new ObjectId(bytes.Slice(at, ObjectId.Size));
                    at += ObjectId.Size;
                }

                entries[i] = new BlockEntry(kind, id, gen);
            }

            if (at != bytes.Length)
            {
                throw Damaged(what, "it has bytes after its last block");
            }

            return new BlockMap(size, blockSize, generation, entries, history);
        }
        catch (ArgumentOutOfRangeException)
        {
            throw Damaged(what, "it ends early");
        }
    }

    private static HavenException Damaged(string what, string why) =>
        new(ErrorCode.Corrupt, $"the block map of {what} is damaged: {why}", "run haven check; back the image up again");
}
