using System.Buffers.Binary;
using Haven.Core.Posix;
using Microsoft.Win32.SafeHandles;

namespace Haven.Images;

/// <summary>
/// Where the larger files of an ext4 filesystem begin and end on the device, from its inode tables and extent trees:
/// the byte offsets (those at 4 KiB units of the device) of the first and the last-plus-one block of every run of a regular file's blocks that holds at
/// least a given number of bytes. Cutting storage chunks there makes each such file start a chunk of its own, so its
/// copies deduplicate however the files around them differ. Only in-use inodes are read (the groups' unused-inode
/// counts are trusted when the filesystem has group descriptor checksums). Files mapped by ext2/3 indirect blocks, and
/// anything this reader does not understand, give no offsets: the chunks are then cut by content alone.
/// </summary>
public static class Ext4FileExtents
{
    private const ushort InodeUninit = 0x1;
    private const uint RoCompatGdtCsum = 0x10;
    private const uint RoCompatMetadataCsum = 0x400;
    private const uint ExtentsFlag = 0x80000;
    private const uint InlineDataFlag = 0x10000000;

    /// <summary>Extent-tree nodes read for one file at most (a file of 4 KiB blocks that needs more is fragmented beyond use).</summary>
    private const int MaxNodesPerFile = 1024;

    /// <summary>At most this many offsets are kept (64 MiB); a filesystem with more has the rest cut by content.</summary>
    public const int MaxOffsets = 8 << 20;

    /// <summary>
    /// The sorted, distinct byte offsets (from the start of <paramref name="device"/>, multiples of <see cref="BlockMap.Unit"/>)
    /// at which runs of at least <paramref name="minBytes"/> of a file's bytes begin and end, for the filesystem that
    /// starts at <paramref name="offset"/>; null when there is no ext4 filesystem with extents there.
    /// </summary>
    public static long[]? Read(SafeFileHandle device, long offset, long length, long minBytes)
    {
        try
        {
            return ReadOrThrow(device, offset, length, minBytes);
        }
        catch (PosixException)
        {
            return null; // the cuts are an optimisation: the blocks themselves are read, and their errors reported, later
        }
    }

    private static long[]? ReadOrThrow(SafeFileHandle device, long offset, long length, long minBytes)
    {
        var bytes = new byte[1024];
        if (length < 2048 || Posix.PRead(device, bytes, offset + 1024) != bytes.Length || Ext4Superblock.Parse(bytes) is not { } sb
            || (sb.Incompat & Ext4Superblock.IncompatMetaBg) != 0 || (sb.Incompat & Ext4Superblock.IncompatExtents) == 0)
        {
            return null;
        }

        // Sizes a damaged or hostile superblock could give that would overflow or allocate without bound.
        long blockSize = sb.BlockSize, blocks = sb.Blocks, perGroup = sb.BlocksPerGroup;
        if (blocks <= 0 || blocks > length / blockSize || sb.FirstDataBlock >= blocks || perGroup != blockSize * 8
            || sb.InodesPerGroup > blockSize * 8)
        {
            return null;
        }

        long groups = (blocks - sb.FirstDataBlock + perGroup - 1) / perGroup;
        int descSize = sb.DescriptorSize;
        long inodeTableBlocks = ((sb.InodesPerGroup * sb.InodeSize) + blockSize - 1) / blockSize;
        if (groups * descSize > 256L << 20)
        {
            return null;
        }

        var gdt = new byte[groups * descSize];
        if (Posix.PRead(device, gdt, offset + ((sb.FirstDataBlock + 1) * blockSize)) != gdt.Length)
        {
            return null;
        }

        bool countsUnused = (sb.RoCompat & (RoCompatGdtCsum | RoCompatMetadataCsum)) != 0;
        long minBlocks = Math.Max(1, (minBytes + blockSize - 1) / blockSize);
        var offsets = new List<long>();
        var runs = new List<(long Logical, long Physical, long Count)>();
        var table = new byte[Math.Min(sb.InodesPerGroup * sb.InodeSize, 1 << 20) / sb.InodeSize * sb.InodeSize];
        for (long g = 0; g < groups && offsets.Count < MaxOffsets; g++)
        {
            int at = (int)(g * descSize);
            ushort flags = BinaryPrimitives.ReadUInt16LittleEndian(gdt.AsSpan(at + 18));
            if (countsUnused && (flags & InodeUninit) != 0)
            {
                continue;
            }

            long inodeTable = Ext4FreeSpace.Field(gdt, at, 8, 40, descSize);
            long unused = countsUnused ? BinaryPrimitives.ReadUInt16LittleEndian(gdt.AsSpan(at + 28)) | (descSize >= 64 ? (long)BinaryPrimitives.ReadUInt16LittleEndian(gdt.AsSpan(at + 50)) << 16 : 0) : 0;
            long inUse = Math.Max(0, sb.InodesPerGroup - unused);
            if (inodeTable <= 0 || inodeTable + inodeTableBlocks > blocks)
            {
                return null;
            }

            for (long first = 0; first < inUse && offsets.Count < MaxOffsets;)
            {
                int count = (int)Math.Min(inUse - first, table.Length / sb.InodeSize);
                var slice = table.AsSpan(0, count * sb.InodeSize);
                if (Posix.PRead(device, slice, offset + (inodeTable * blockSize) + (first * sb.InodeSize)) != slice.Length)
                {
                    return null;
                }

                for (int i = 0; i < count; i++)
                {
                    var inode = slice.Slice(i * sb.InodeSize, sb.InodeSize);
                    uint iflags = BinaryPrimitives.ReadUInt32LittleEndian(inode[32..]);
                    if ((BinaryPrimitives.ReadUInt16LittleEndian(inode) & 0xF000) != 0x8000 || BinaryPrimitives.ReadUInt16LittleEndian(inode[26..]) == 0
                        || (iflags & ExtentsFlag) == 0 || (iflags & InlineDataFlag) != 0)
                    {
                        continue; // not a regular file in use, or one without an extent tree
                    }

                    runs.Clear();
                    int budget = MaxNodesPerFile;
                    if (!Walk(device, offset, blockSize, blocks, inode.Slice(40, 60), runs, -1, ref budget))
                    {
                        continue; // a damaged tree: its blocks are cut by content
                    }

                    AddRuns(runs, minBlocks, offset, blockSize, offsets);
                }

                first += count;
            }
        }

        return SortedDistinct(offsets);
    }

    /// <summary>The offsets sorted, each once, at most <see cref="MaxOffsets"/>.</summary>
    internal static long[] SortedDistinct(List<long> offsets)
    {
        offsets.Sort();
        int kept = 0;
        for (int i = 0; i < offsets.Count && kept < MaxOffsets; i++)
        {
            if (kept == 0 || offsets[i] != offsets[kept - 1])
            {
                offsets[kept++] = offsets[i];
            }
        }

        return offsets.GetRange(0, kept).ToArray();
    }

    /// <summary>The runs of a file's blocks that are contiguous both in the file and on the device, as offsets.</summary>
    private static void AddRuns(List<(long Logical, long Physical, long Count)> extents, long minBlocks, long offset, long blockSize, List<long> offsets)
    {
        extents.Sort((x, y) => x.Logical.CompareTo(y.Logical));
        for (int i = 0; i < extents.Count;)
        {
            var (logical, physical, count) = extents[i++];
            while (i < extents.Count && extents[i].Logical == logical + count && extents[i].Physical == physical + count)
            {
                count += extents[i++].Count;
            }

            if (count >= minBlocks)
            {
                // Cuts fall between 4 KiB units of the device: with smaller filesystem blocks some ends fall inside one.
                foreach (long at in (ReadOnlySpan<long>)[offset + (physical * blockSize), offset + ((physical + count) * blockSize)])
                {
                    if (at % BlockMap.Unit == 0)
                    {
                        offsets.Add(at);
                    }
                }
            }
        }
    }

    /// <summary>Collects the initialised extents of one extent-tree node and its children; false when the tree is damaged.</summary>
    /// <remarks>
    /// A node's depth must be one less than its parent's (<paramref name="parentDepth"/>, -1 for the inode's root), and
    /// a file may have at most <see cref="MaxNodesPerFile"/> nodes read: a crafted tree whose entries point at each
    /// other or at one node again ends there instead of being read without end.
    /// </remarks>
    private static bool Walk(SafeFileHandle device, long offset, long blockSize, long blocks, ReadOnlySpan<byte> header, List<(long, long, long)> runs,
        int parentDepth, ref int budget)
    {
        if (header.Length < 12 || BinaryPrimitives.ReadUInt16LittleEndian(header) != 0xF30A)
        {
            return false;
        }

        int entries = BinaryPrimitives.ReadUInt16LittleEndian(header[2..]);
        int max = BinaryPrimitives.ReadUInt16LittleEndian(header[4..]);
        int depth = BinaryPrimitives.ReadUInt16LittleEndian(header[6..]);
        if (entries > max || 12 + (entries * 12) > header.Length || depth > 5 || (parentDepth >= 0 && depth != parentDepth - 1))
        {
            return false;
        }

        for (int i = 0; i < entries; i++)
        {
            var e = header.Slice(12 + (i * 12), 12);
            if (depth == 0)
            {
                long logical = BinaryPrimitives.ReadUInt32LittleEndian(e);
                int length = BinaryPrimitives.ReadUInt16LittleEndian(e[4..]);
                long physical = ((long)BinaryPrimitives.ReadUInt16LittleEndian(e[6..]) << 32) | BinaryPrimitives.ReadUInt32LittleEndian(e[8..]);
                if (length > 32768)
                {
                    continue; // unwritten: reads as zeros, whatever the blocks hold
                }

                if (physical <= 0 || physical + length > blocks)
                {
                    return false;
                }

                runs.Add((logical, physical, length));
            }
            else
            {
                long child = ((long)BinaryPrimitives.ReadUInt16LittleEndian(e[8..]) << 32) | BinaryPrimitives.ReadUInt32LittleEndian(e[4..]);
                if (child <= 0 || child >= blocks || --budget < 0)
                {
                    return false;
                }

                // Trees deeper than the inode are rare (more than four extents): each node gets its own buffer.
                var node = new byte[blockSize];
                if (Posix.PRead(device, node, offset + (child * blockSize)) != node.Length || !Walk(device, offset, blockSize, blocks, node, runs, depth, ref budget))
                {
                    return false;
                }
            }
        }

        return true;
    }
}
