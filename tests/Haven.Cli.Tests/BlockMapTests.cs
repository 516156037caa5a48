using Haven.Core;
using Haven.Images;
using Xunit;

namespace Haven.Cli.Tests;

/// <summary>The block map's encoding (docs/design/repository-format.md §10.1, §10.2): format 2 round trips, format 1 still reads, damage is refused.</summary>
public sealed class BlockMapTests
{
    private const int BlockSize = 16384;

    private static ObjectId Id(byte b)
    {
        var bytes = new byte[ObjectId.Size];
        bytes.AsSpan().Fill(b);
        return new ObjectId(bytes);
    }

    /// <summary>Five blocks, the last one short: data, data, zero, data, data (short).</summary>
    private static BlockEntry[] Entries() =>
    [
        new(BlockKind.Data, Id(1), 1), new(BlockKind.Data, Id(2), 2), new(BlockKind.Zero, ObjectId.Zero, 1),
        new(BlockKind.Data, Id(3), 1), new(BlockKind.Data, Id(4), 2),
    ];

    private const long Size = (4 * BlockSize) + 5000;

    private static Placement[] Tiling() =>
    [
        new(0, 20480, 0, Id(10)), new(20480, (2 * BlockSize) - 20480, 4096, Id(11)), // blocks 0-1 in two chunks, one sliced
        new(3 * BlockSize, BlockSize + 5000, 0, Id(12)), // blocks 3-4 in one chunk, up to the image's end
    ];

    [Fact]
    public void Format2_RoundTrips_WithItsPlacements()
    {
        var map = new BlockMap(Size, BlockSize, 2, Entries(), [new(1, 4, DateTimeOffset.FromUnixTimeMilliseconds(1000)), new(2, 2, DateTimeOffset.FromUnixTimeMilliseconds(2000))], Tiling());
        var back = BlockMap.Decode(map.Encode(), "test");
        Assert.Equal(2, back.Format);
        Assert.Equal(Entries(), back.Entries);
        Assert.Equal(Tiling(), back.Placements);
        Assert.Equal(map.History, back.History);
        Assert.Equal([Id(10), Id(11), Id(12)], back.StoredBlobs());
        Assert.Equal(1, back.FirstPlacementEndingAfter(20480));
        Assert.Equal(2, back.FirstPlacementEndingAfter(2 * BlockSize));
        Assert.Equal(3, back.FirstPlacementEndingAfter(Size));
    }

    [Fact]
    public void Format1_IsRead_WithOnePlacementPerDataBlock()
    {
        var entries = Entries();
        var bytes = new List<byte>("HVNBMAP1"u8.ToArray());
        void Put(long value, int width) => bytes.AddRange(BitConverter.GetBytes(value).AsSpan(0, width).ToArray()); // little-endian here

        Put(Size, 8);
        Put(BlockSize, 4);
        Put(2, 4);
        Put(entries.Length, 8);
        Put(0, 4);
        foreach (var e in entries)
        {
            bytes.Add((byte)e.Kind);
            Put(e.Generation, 4);
            if (e.Kind == BlockKind.Data)
            {
                var id = new byte[ObjectId.Size];
                e.Id.CopyTo(id);
                bytes.AddRange(id);
            }
        }

        var map = BlockMap.Decode(bytes.ToArray(), "test");
        Assert.Equal(1, map.Format);
        Assert.Equal(
            [new Placement(0, BlockSize, 0, Id(1)), new(BlockSize, BlockSize, 0, Id(2)), new(3 * BlockSize, BlockSize, 0, Id(3)), new(4 * BlockSize, 5000, 0, Id(4))],
            map.Placements);
    }

    public static TheoryData<string, Placement[]> DamagedTilings() => new()
    {
        { "overlap", [new(0, 20480, 0, Id(10)), new(16384, 16384, 0, Id(11)), new(3 * BlockSize, BlockSize + 5000, 0, Id(12))] },
        { "covers the zero block", [new(0, 3 * BlockSize, 0, Id(10)), new(3 * BlockSize, BlockSize + 5000, 0, Id(12))] },
        { "a gap", [new(0, 20480, 0, Id(10)), new(3 * BlockSize, BlockSize + 5000, 0, Id(12))] },
        { "past the end", [new(0, 2 * BlockSize, 0, Id(10)), new(3 * BlockSize, BlockSize + 5001, 0, Id(12))] },
    };

    [Theory]
    [MemberData(nameof(DamagedTilings))]
    public void PlacementsThatDoNotTileTheDataBlocks_AreRefusedAsDamage(string what, Placement[] placements)
    {
        var bytes = new BlockMap(Size, BlockSize, 2, Entries(), [], placements).Encode();
        var e = Assert.Throws<HavenException>(() => BlockMap.Decode(bytes, "test"));
        Assert.True(e.Code == ErrorCode.Corrupt, what);
        Assert.Contains("block map of test is damaged", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void AMapCutShort_IsRefusedAsDamage()
    {
        var bytes = new BlockMap(Size, BlockSize, 2, Entries(), [], Tiling()).Encode();
        var e = Assert.Throws<HavenException>(() => BlockMap.Decode(bytes.AsSpan(0, bytes.Length - 10), "test"));
        Assert.Equal(ErrorCode.Corrupt, e.Code);
    }
}
