using System.Buffers.Binary;
using Haven.Core.Posix;
using Microsoft.Win32.SafeHandles;

namespace Haven.Images;

/// <summary>
/// The free blocks of an XFS filesystem, from the free-space B+tree that each allocation group keeps sorted by block
/// number (its AGF header names the root). Version 4 and 5 (CRC) filesystems are read; the checksums are not checked,
/// but every header's magic, level and counts are, and anything out of place gives no free ranges: every block is
/// read. The realtime device and an external log lie outside the source and do not matter here.
/// </summary>
public static class XfsFreeSpace
{
    private const uint SuperMagic = 0x58465342;   // "XFSB"
    private const uint AgfMagic = 0x58414746;     // "XAGF"
    private const uint BnoMagic = 0x41425442;     // "ABTB", version 4
    private const uint BnoCrcMagic = 0x41423342;  // "AB3B", version 5
    private const int MaxLevels = 9;

    /// <summary>Free byte ranges [start, end) of the XFS filesystem that starts at <paramref name="offset"/>, or null.</summary>
    public static List<(long Start, long End)>? Read(SafeFileHandle device, long offset, long length)
    {
        var sb = new byte[512];
        if (length < 64 * 1024 || Posix.PRead(device, sb, offset) != sb.Length || Be32(sb, 0) != SuperMagic)
        {
            return null;
        }

        long blockSize = Be32(sb, 4);
        long dblocks = (long)BinaryPrimitives.ReadUInt64BigEndian(sb.AsSpan(8));
        long agBlocks = Be32(sb, 84);
        long agCount = Be32(sb, 88);
        int version = BinaryPrimitives.ReadUInt16BigEndian(sb.AsSpan(100)) & 0xF;
        int sectorSize = BinaryPrimitives.ReadUInt16BigEndian(sb.AsSpan(102));
        if (blockSize is < 512 or > 65536 || (blockSize & (blockSize - 1)) != 0 || sectorSize is < 512 or > 32768 || (sectorSize & (sectorSize - 1)) != 0
            || version is not (4 or 5) || agBlocks <= 0 || agCount <= 0 || dblocks <= 0 || dblocks > agBlocks * agCount
            || dblocks <= agBlocks * (agCount - 1) || dblocks * blockSize > length)
        {
            return null;
        }

        int header = version == 5 ? 56 : 16;
        uint magic = version == 5 ? BnoCrcMagic : BnoMagic;
        var free = new List<(long, long)>();
        var agf = new byte[sectorSize];
        var node = new byte[blockSize];
        for (long ag = 0; ag < agCount; ag++)
        {
            long agStart = offset + (ag * agBlocks * blockSize);
            if (Posix.PRead(device, agf, agStart + sectorSize) != agf.Length || Be32(agf, 0) != AgfMagic || Be32(agf, 8) != ag)
            {
                return null;
            }

            long agLength = Be32(agf, 12);
            long root = Be32(agf, 16);
            long levels = Be32(agf, 28);
            if (agLength <= 0 || agLength > agBlocks || (ag * agBlocks) + agLength > dblocks || root <= 0 || root >= agLength || levels is < 1 or > MaxLevels)
            {
                return null;
            }

            // Down the leftmost pointers to the leaves, then along the leaves by their right siblings.
            long block = root;
            for (long level = levels - 1; level > 0; level--)
            {
                if (!ReadNode(device, agStart, block, node, magic, level, header, out int records) || records < 1)
                {
                    return null;
                }

                int maxRecords = (int)((blockSize - header) / 12); // keys of 8 bytes, then pointers of 4
                block = Be32(node, header + (maxRecords * 8));
                if (block <= 0 || block >= agLength)
                {
                    return null;
                }
            }

            long leaves = 0;
            while (true)
            {
                if (++leaves > agLength || !ReadNode(device, agStart, block, node, magic, 0, header, out int records) || header + (records * 8L) > blockSize)
                {
                    return null;
                }

                for (int r = 0; r < records; r++)
                {
                    long start = Be32(node, header + (r * 8)), count = Be32(node, header + (r * 8) + 4);
                    if (count <= 0 || start + count > agLength)
                    {
                        return null;
                    }

                    free.Add((agStart + (start * blockSize), agStart + ((start + count) * blockSize)));
                }

                long right = Be32(node, 12);
                if (right == 0xFFFF_FFFF)
                {
                    break;
                }

                if (right <= 0 || right >= agLength)
                {
                    return null;
                }

                block = right;
            }
        }

        return free;
    }

    private static bool ReadNode(SafeFileHandle device, long agStart, long block, byte[] node, uint magic, long level, int header, out int records)
    {
        records = 0;
        if (Posix.PRead(device, node, agStart + (block * node.Length)) != node.Length || Be32(node, 0) != magic
            || BinaryPrimitives.ReadUInt16BigEndian(node.AsSpan(4)) != level)
        {
            return false;
        }

        records = BinaryPrimitives.ReadUInt16BigEndian(node.AsSpan(6));
        return header + (records * 8L) <= node.Length;
    }

    private static long Be32(byte[] b, int at) => BinaryPrimitives.ReadUInt32BigEndian(b.AsSpan(at));
}
