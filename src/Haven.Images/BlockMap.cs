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
/// A run of an image's bytes held by one data blob (a storage chunk): the image's bytes [<see cref="Offset"/>,
/// <see cref="Offset"/> + <see cref="Length"/>) are the blob's bytes from <see cref="Skip"/> on.
/// </summary>
public readonly record struct Placement(long Offset, int Length, int Skip, ObjectId Id)
{
    public long End => Offset + Length;

    /// <summary>The part of this placement within the image's bytes [<paramref name="from"/>, <paramref name="to"/>), which it must overlap.</summary>
    public Placement Clip(long from, long to)
    {
        long start = Math.Max(Offset, from), end = Math.Min(End, to);
        return new Placement(start, (int)(end - start), Skip + (int)(start - Offset), Id);
    }
}

/// <summary>
/// The block map of an image snapshot (normative: docs/design/repository-format.md, "Image snapshots"): for every
/// block its kind, checksum and the generation in which it last changed, per generation how many blocks changed, and
/// the placements: which storage chunk holds which bytes of the data blocks.
/// <para>
/// Encoding, little-endian: magic <c>"HVNBMAP2"</c> ‖ u64 image size ‖ u32 block size ‖ u32 generation ‖ u64 block
/// count ‖ u32 history count ‖ (u32 generation ‖ u64 blocks changed ‖ i64 unix milliseconds)* ‖ per block:
/// u8 kind ‖ u32 generation ‖ (32-byte checksum, data blocks only) ‖ u32 unit ‖ u64 placement count ‖ per placement:
/// u64 offset ‖ u32 length ‖ u32 skip ‖ 32-byte blob id. Format 1 (<c>"HVNBMAP1"</c>) ends after the blocks; each of
/// its data blocks is a blob whose id is the block's checksum, read here as a placement of its own.
/// </para>
/// </summary>
public sealed class BlockMap
{
    /// <summary>Storage chunks are cut at multiples of this many bytes.</summary>
    public const int Unit = 4096;

    private static ReadOnlySpan<byte> Magic1 => "HVNBMAP1"u8;

    private static ReadOnlySpan<byte> Magic2 => "HVNBMAP2"u8;

    private const int PlacementBytes = 8 + 4 + 4 + ObjectId.Size;

    public BlockMap(long imageSize, int blockSize, uint generation, BlockEntry[] entries, IReadOnlyList<GenerationRecord> history, Placement[] placements)
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
        Placements = placements;
    }

    public long ImageSize { get; }

    public int BlockSize { get; }

    public uint Generation { get; }

    public BlockEntry[] Entries { get; }

    /// <summary>Every generation of this source up to this one, oldest first.</summary>
    public IReadOnlyList<GenerationRecord> History { get; }

    /// <summary>Sorted by offset, not overlapping; together they hold exactly the bytes of the data blocks.</summary>
    public Placement[] Placements { get; }

    /// <summary>1 when decoded from a map whose blobs are its blocks, 2 otherwise.</summary>
    public int Format { get; private init; } = 2;

    public static long BlockCount(long imageSize, int blockSize) => (imageSize + blockSize - 1) / blockSize;

    /// <summary>Bytes of block <paramref name="index"/> (the last block may be short).</summary>
    public int LengthOf(long index) => LengthOf(ImageSize, BlockSize, index);

    /// <summary>Bytes of block <paramref name="index"/> of an image of <paramref name="imageSize"/> bytes.</summary>
    public static int LengthOf(long imageSize, int blockSize, long index) => (int)Math.Min(blockSize, imageSize - (index * blockSize));

    /// <summary>The first and last blocks that <paramref name="p"/> holds bytes of.</summary>
    public (long First, long Last) BlocksOf(Placement p) => (p.Offset / BlockSize, (p.End - 1) / BlockSize);

    /// <summary>The distinct blobs of the placements, in order of first use.</summary>
    public List<ObjectId> StoredBlobs()
    {
        var seen = new HashSet<ObjectId>();
        return Placements.Select(p => p.Id).Where(seen.Add).ToList();
    }

    /// <summary>The index of the first placement that ends after <paramref name="offset"/> (Placements.Length when none does).</summary>
    public int FirstPlacementEndingAfter(long offset)
    {
        int lo = 0, hi = Placements.Length;
        while (lo < hi)
        {
            int mid = (lo + hi) >>> 1;
            if (Placements[mid].End <= offset)
            {
                lo = mid + 1;
            }
            else
            {
                hi = mid;
            }
        }

        return lo;
    }

    /// <summary>The placements of the data blocks of a format 1 map: one per block, its blob being the block.</summary>
    private static Placement[] OnePerBlock(BlockEntry[] entries, long size, int blockSize)
    {
        var placements = new List<Placement>();
        for (long i = 0; i < entries.LongLength; i++)
        {
            if (entries[i].Kind == BlockKind.Data)
            {
                placements.Add(new Placement(i * blockSize, LengthOf(size, blockSize, i), 0, entries[i].Id));
            }
        }

        return placements.ToArray();
    }

    public byte[] Encode()
    {
        long dataBlocks = Entries.LongCount(e => e.Kind == BlockKind.Data);
        long length = Magic2.Length + 8 + 4 + 4 + 8 + 4 + (History.Count * 20L) + (Entries.LongLength * 5) + (dataBlocks * ObjectId.Size)
            + 4 + 8 + (Placements.LongLength * PlacementBytes);
        if (length > Array.MaxLength)
        {
            throw new HavenException(ErrorCode.Usage, $"the block map of this image would take {length} bytes, more than one map can hold", "back it up again with a larger --block-size");
        }

        var bytes = new byte[length];
        var span = bytes.AsSpan();
        Magic2.CopyTo(span);
        int at = Magic2.Length;
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

        BinaryPrimitives.WriteInt32LittleEndian(bytes.AsSpan((int)pos), Unit);
        BinaryPrimitives.WriteInt64LittleEndian(bytes.AsSpan((int)pos + 4), Placements.LongLength);
        pos += 12;
        foreach (var p in Placements)
        {
            var to = bytes.AsSpan((int)pos);
            BinaryPrimitives.WriteInt64LittleEndian(to, p.Offset);
            BinaryPrimitives.WriteInt32LittleEndian(to[8..], p.Length);
            BinaryPrimitives.WriteInt32LittleEndian(to[12..], p.Skip);
            p.Id.CopyTo(to[16..]);
            pos += PlacementBytes;
        }

        return bytes;
    }

    public static BlockMap Decode(ReadOnlySpan<byte> bytes, string what)
    {
        try
        {
            int format = bytes.StartsWith(Magic2) ? 2 : bytes.StartsWith(Magic1) ? 1
                : throw Damaged(what, "it does not start with the block map's magic");
            int at = Magic2.Length;
            long size = BinaryPrimitives.ReadInt64LittleEndian(bytes[at..]);
            int blockSize = BinaryPrimitives.ReadInt32LittleEndian(bytes[(at + 8)..]);
            uint generation = BinaryPrimitives.ReadUInt32LittleEndian(bytes[(at + 12)..]);
            long count = BinaryPrimitives.ReadInt64LittleEndian(bytes[(at + 16)..]);
            int historyCount = BinaryPrimitives.ReadInt32LittleEndian(bytes[(at + 24)..]);
            at += 28;
            if (blockSize <= 0 || size < 0 || count != BlockCount(size, blockSize) || historyCount < 0 || count > bytes.Length
                || historyCount > (bytes.Length - at) / 20)
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

            Placement[] placements;
            if (format == 1)
            {
                placements = OnePerBlock(entries, size, blockSize);
            }
            else
            {
                int unit = BinaryPrimitives.ReadInt32LittleEndian(bytes[at..]);
                long placementCount = BinaryPrimitives.ReadInt64LittleEndian(bytes[(at + 4)..]);
                at += 12;
                if (unit != Unit || placementCount < 0 || placementCount > (bytes.Length - at) / PlacementBytes)
                {
                    throw Damaged(what, "its placements' header does not add up");
                }

                placements = new Placement[placementCount];
                for (long i = 0; i < placementCount; i++)
                {
                    var from = bytes.Slice(at, PlacementBytes);
                    placements[i] = new Placement(BinaryPrimitives.ReadInt64LittleEndian(from), BinaryPrimitives.ReadInt32LittleEndian(from[8..]),
                        BinaryPrimitives.ReadInt32LittleEndian(from[12..]), new ObjectId(from.Slice(16, ObjectId.Size)));
                    at += PlacementBytes;
                }

                CheckPlacements(placements, entries, size, blockSize, what);
            }

            if (at != bytes.Length)
            {
                throw Damaged(what, "it has bytes after its last block");
            }

            return new BlockMap(size, blockSize, generation, entries, history, placements) { Format = format };
        }
        catch (Exception e) when (e is ArgumentOutOfRangeException or IndexOutOfRangeException)
        {
            throw Damaged(what, "it ends early");
        }
    }

    /// <summary>
    /// Placements are sorted, do not overlap and cover data blocks only; as they place as many bytes as the data blocks
    /// hold, they hold every byte of them.
    /// </summary>
    private static void CheckPlacements(Placement[] placements, BlockEntry[] entries, long size, int blockSize, string what)
    {
        long end = 0, placed = 0;
        foreach (var p in placements)
        {
            if (p.Length <= 0 || p.Skip < 0 || p.Offset < end || p.Offset > size - p.Length)
            {
                throw Damaged(what, $"its placement at byte {p.Offset} overlaps another or lies outside the image");
            }

            for (long b = p.Offset / blockSize; b <= (p.End - 1) / blockSize; b++)
            {
                if (entries[b].Kind != BlockKind.Data)
                {
                    throw Damaged(what, $"its placement at byte {p.Offset} covers block {b}, which holds no data");
                }
            }

            end = p.End;
            placed += p.Length;
        }

        long data = 0;
        for (long b = 0; b < entries.LongLength; b++)
        {
            data += entries[b].Kind == BlockKind.Data ? LengthOf(size, blockSize, b) : 0;
        }

        if (placed != data)
        {
            throw Damaged(what, $"its placements hold {placed} bytes, but its data blocks {data}");
        }
    }

    private static HavenException Damaged(string what, string why) =>
        new(ErrorCode.Corrupt, $"the block map of {what} is damaged: {why}", "run haven check; back the image up again");
}
