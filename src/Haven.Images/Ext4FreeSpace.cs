using System.Buffers.Binary;
using Haven.Core.Posix;
using Microsoft.Win32.SafeHandles;

namespace Haven.Images;

/// <summary>
/// The free blocks of an ext2/3/4 filesystem, from its own allocation bitmaps, as byte ranges of the device. Blocks of
/// groups whose bitmap was never initialised (BLOCK_UNINIT) are free except the group's metadata: a backup superblock
/// and group descriptors where the group holds one, and any group's bitmaps and inode table that lie in it. Anything
/// this reader does not understand (meta_bg, odd sizes, a damaged superblock) gives no free ranges: every block is read.
/// </summary>
public static class Ext4FreeSpace
{
    private const ushort BlockUninit = 0x2;

    /// <summary>Free byte ranges [start, end) of the filesystem that starts at <paramref name="offset"/>, or null when none is found.</summary>
    public static List<(long Start, long End)>? Read(SafeFileHandle device, long offset, long length)
    {
        var bytes = new byte[1024];
        if (length < 2048 || Posix.PRead(device, bytes, offset + 1024) != bytes.Length || Ext4Superblock.Parse(bytes) is not { } sb
            || (sb.Incompat & Ext4Superblock.IncompatMetaBg) != 0)
        {
            return null;
        }

        long blockSize = sb.BlockSize, blocks = sb.Blocks, firstDataBlock = sb.FirstDataBlock, perGroup = sb.BlocksPerGroup;
        int descSize = sb.DescriptorSize, reservedGdt = sb.ReservedGdtBlocks;
        if (blocks <= 0 || perGroup != blockSize * 8 || blocks > length / blockSize || firstDataBlock >= blocks)
        {
            return null;
        }

        long groups = (blocks - firstDataBlock + perGroup - 1) / perGroup;
        long gdtBlocks = ((groups * descSize) + blockSize - 1) / blockSize;
        var gdt = new byte[gdtBlocks * blockSize];
        if (Posix.PRead(device, gdt, offset + ((firstDataBlock + 1) * blockSize)) != gdt.Length)
        {
            return null;
        }

        long inodeTableBlocks = ((sb.InodesPerGroup * sb.InodeSize) + blockSize - 1) / blockSize;
        var descriptors = new (long BlockBitmap, long InodeBitmap, long InodeTable, ushort Flags)[groups];
        for (long g = 0; g < groups; g++)
        {
            int at = (int)(g * descSize);
            descriptors[g] = (Field(gdt, at, 0, 32, descSize), Field(gdt, at, 4, 36, descSize), Field(gdt, at, 8, 40, descSize), BinaryPrimitives.ReadUInt16LittleEndian(gdt.AsSpan(at + 18)));
        }

        // Metadata that every group's bitmap and inode table occupy, wherever flex_bg put them.
        var metadata = new List<(long First, long Count)>();
        foreach (var (blockBitmap, inodeBitmap, inodeTable, _) in descriptors)
        {
            metadata.Add((blockBitmap, 1));
            metadata.Add((inodeBitmap, 1));
            metadata.Add((inodeTable, inodeTableBlocks));
        }

        var free = new List<(long, long)>();
        var bitmap = new byte[blockSize];
        for (long g = 0; g < groups; g++)
        {
            long first = firstDataBlock + (g * perGroup);
            long count = Math.Min(perGroup, blocks - first);
            var used = new bool[count];
            if ((descriptors[g].Flags & BlockUninit) == 0)
            {
                if (descriptors[g].BlockBitmap <= 0 || descriptors[g].BlockBitmap >= blocks || Posix.PRead(device, bitmap, offset + (descriptors[g].BlockBitmap * blockSize)) != bitmap.Length)
                {
                    return null;
                }

                for (long i = 0; i < count; i++)
                {
                    used[i] = (bitmap[i >> 3] & (1 << (int)(i & 7))) != 0;
                }
            }
            else
            {
                if (HasSuperblockBackup(g, (sb.RoCompat & Ext4Superblock.RoCompatSparseSuper) != 0))
                {
                    for (long i = 0; i < Math.Min(count, 1 + gdtBlocks + reservedGdt); i++)
                    {
                        used[i] = true;
                    }
                }

                foreach (var (mFirst, mCount) in metadata)
                {
                    for (long b = Math.Max(mFirst, first); b < Math.Min(mFirst + mCount, first + count); b++)
                    {
                        used[b - first] = true;
                    }
                }
            }

            for (long i = 0; i < count;)
            {
                if (used[i])
                {
                    i++;
                    continue;
                }

                long run = i;
                while (i < count && !used[i])
                {
                    i++;
                }

                free.Add((offset + ((first + run) * blockSize), offset + ((first + i) * blockSize)));
            }
        }

        return free;
    }

    /// <summary>A block number of a group descriptor: its low 32 bits, and with 64-byte descriptors its high 32 bits.</summary>
    internal static long Field(byte[] gdt, int at, int lo, int hi, int descSize) =>
        BinaryPrimitives.ReadUInt32LittleEndian(gdt.AsSpan(at + lo)) | (descSize >= 64 ? (long)BinaryPrimitives.ReadUInt32LittleEndian(gdt.AsSpan(at + hi)) << 32 : 0);

    /// <summary>With sparse_super, groups 0, 1 and powers of 3, 5 and 7 hold backups; without it, every group.</summary>
    private static bool HasSuperblockBackup(long group, bool sparse)
    {
        if (!sparse || group <= 1)
        {
            return true;
        }

        foreach (long b in new long[] { 3, 5, 7 })
        {
            long p = b;
            while (p < group)
            {
                p *= b;
            }

            if (p == group)
            {
                return true;
            }
        }

        return false;
    }
}
