using System.Buffers.Binary;
using Haven.Core.Posix;
using Microsoft.Win32.SafeHandles;

namespace Haven.Images;

/// <summary>
/// The free clusters of a FAT12, FAT16 or FAT32 filesystem (an EFI system partition, a USB stick), from its first file
/// allocation table, as byte ranges of the device. The boot sector, the tables and FAT12/16's root folder lie before
/// the data area and are always used. A boot sector this reader does not understand gives no free ranges.
/// </summary>
public static class FatFreeSpace
{
    /// <summary>The largest table read (a FAT32 of 64 million clusters).</summary>
    private const long MaxTableBytes = 256L << 20;

    /// <summary>Free byte ranges [start, end) of the FAT filesystem that starts at <paramref name="offset"/>, its kind ("FAT12", "FAT16", "FAT32"), or null.</summary>
    public static (List<(long Start, long End)> Free, string Kind)? Read(SafeFileHandle device, long offset, long length)
    {
        var boot = new byte[512];
        if (length < 64 * 512 || Posix.PRead(device, boot, offset) != boot.Length || boot[510] != 0x55 || boot[511] != 0xAA || boot[0] is not (0xEB or 0xE9))
        {
            return null;
        }

        var b = boot.AsSpan();
        int sectorSize = BinaryPrimitives.ReadUInt16LittleEndian(b[11..]);
        int perCluster = b[13];
        int reserved = BinaryPrimitives.ReadUInt16LittleEndian(b[14..]);
        int tables = b[16];
        int rootEntries = BinaryPrimitives.ReadUInt16LittleEndian(b[17..]);
        long sectors = BinaryPrimitives.ReadUInt16LittleEndian(b[19..]) is var small and > 0 ? small : BinaryPrimitives.ReadUInt32LittleEndian(b[32..]);
        int tableSize16 = BinaryPrimitives.ReadUInt16LittleEndian(b[22..]);
        long tableSectors = tableSize16 > 0 ? tableSize16 : BinaryPrimitives.ReadUInt32LittleEndian(b[36..]);
        if (sectorSize is not (512 or 1024 or 2048 or 4096) || perCluster == 0 || (perCluster & (perCluster - 1)) != 0 || reserved == 0
            || tables is < 1 or > 4 || tableSectors == 0 || sectors * sectorSize > length)
        {
            return null;
        }

        long rootSectors = ((rootEntries * 32L) + sectorSize - 1) / sectorSize;
        long dataStart = reserved + (tables * tableSectors) + rootSectors;
        if (dataStart >= sectors)
        {
            return null;
        }

        long clusters = (sectors - dataStart) / perCluster;
        int bits = clusters < 4085 ? 12 : clusters < 65525 ? 16 : 32;
        long tableBytes = (((clusters + 2) * bits) + 7) / 8;
        // FAT32 has no fixed root folder and a 32-bit table size; FAT12/16 the opposite.
        if ((bits == 32) != (rootEntries == 0 && tableSize16 == 0) || tableBytes > tableSectors * sectorSize || tableBytes > MaxTableBytes)
        {
            return null;
        }

        var table = new byte[tableBytes];
        if (Posix.PRead(device, table, offset + ((long)reserved * sectorSize)) != table.Length)
        {
            return null;
        }

        long clusterBytes = (long)perCluster * sectorSize;
        long dataOffset = offset + (dataStart * sectorSize);
        var free = new List<(long Start, long End)>();
        long runStart = -1;
        for (long c = 2; c < clusters + 2; c++)
        {
            bool isFree = Entry(table, c, bits) == 0;
            if (isFree && runStart < 0)
            {
                runStart = c;
            }
            else if (!isFree && runStart >= 0)
            {
                free.Add((dataOffset + ((runStart - 2) * clusterBytes), dataOffset + ((c - 2) * clusterBytes)));
                runStart = -1;
            }
        }

        if (runStart >= 0)
        {
            free.Add((dataOffset + ((runStart - 2) * clusterBytes), dataOffset + (clusters * clusterBytes)));
        }

        return (free, $"FAT{bits}");
    }

    private static uint Entry(byte[] table, long cluster, int bits)
    {
        switch (bits)
        {
            case 32:
                return BinaryPrimitives.ReadUInt32LittleEndian(table.AsSpan((int)(cluster * 4))) & 0x0FFF_FFFF;
            case 16:
                return BinaryPrimitives.ReadUInt16LittleEndian(table.AsSpan((int)(cluster * 2)));
            default:
                int at = (int)(cluster * 3 / 2);
                int pair = table[at] | (table[at + 1] << 8);
                return (uint)((cluster & 1) == 0 ? pair & 0xFFF : pair >> 4);
        }
    }
}
