using System.Buffers.Binary;

namespace Haven.Images;

/// <summary>
/// The fields of an ext2/3/4 superblock (the 1024 bytes at byte 1024 of the filesystem) that Haven's readers use, or
/// null from <see cref="Parse"/> when the bytes are no superblock or one with sizes out of range.
/// </summary>
internal sealed record Ext4Superblock(
    long BlockSize, long Blocks, long FirstDataBlock, long BlocksPerGroup, long InodesPerGroup, int InodeSize,
    int ReservedGdtBlocks, int DescriptorSize, uint Incompat, uint RoCompat)
{
    public const uint IncompatMetaBg = 0x10;
    public const uint IncompatExtents = 0x40;
    public const uint Incompat64Bit = 0x80;
    public const uint RoCompatSparseSuper = 0x1;

    public static Ext4Superblock? Parse(ReadOnlySpan<byte> sb)
    {
        if (sb.Length < 1024 || BinaryPrimitives.ReadUInt16LittleEndian(sb[56..]) != 0xEF53)
        {
            return null;
        }

        uint log = BinaryPrimitives.ReadUInt32LittleEndian(sb[24..]);
        uint incompat = BinaryPrimitives.ReadUInt32LittleEndian(sb[96..]);
        bool is64 = (incompat & Incompat64Bit) != 0;
        long blocks = BinaryPrimitives.ReadUInt32LittleEndian(sb[4..]) | (is64 ? (long)BinaryPrimitives.ReadUInt32LittleEndian(sb[336..]) << 32 : 0);
        var parsed = new Ext4Superblock(
            BlockSize: log > 6 ? 0 : 1024L << (int)log,
            Blocks: blocks,
            FirstDataBlock: BinaryPrimitives.ReadUInt32LittleEndian(sb[20..]),
            BlocksPerGroup: BinaryPrimitives.ReadUInt32LittleEndian(sb[32..]),
            InodesPerGroup: BinaryPrimitives.ReadUInt32LittleEndian(sb[40..]),
            InodeSize: BinaryPrimitives.ReadUInt16LittleEndian(sb[88..]),
            ReservedGdtBlocks: BinaryPrimitives.ReadUInt16LittleEndian(sb[206..]),
            DescriptorSize: is64 ? BinaryPrimitives.ReadUInt16LittleEndian(sb[254..]) : 32,
            Incompat: incompat,
            RoCompat: BinaryPrimitives.ReadUInt32LittleEndian(sb[100..]));
        return parsed.BlockSize == 0 || parsed.InodeSize < 128 || parsed.InodesPerGroup <= 0 || parsed.DescriptorSize is < 32 or > 1024 ? null : parsed;
    }
}
