using System.Buffers.Binary;
using Haven.Core.Posix;
using Microsoft.Win32.SafeHandles;

namespace Haven.Images;

/// <summary>
/// The free clusters of an NTFS filesystem, from its own allocation bitmap: the unnamed data of the $Bitmap file
/// (MFT record 6), one bit per cluster, set when the cluster is used. The record is found through the boot sector's
/// MFT location and record size; its update-sequence fixups are checked and applied, and its data runs decoded.
/// The backup boot sector after the last cluster is never free. Anything this reader does not understand (an
/// attribute list on $Bitmap, odd sizes, a failed fixup) gives no free ranges: every block is read.
/// </summary>
public static class NtfsFreeSpace
{
    private const int BitmapRecord = 6;
    private const uint DataAttribute = 0x80;
    private const uint AttributeList = 0x20;
    private const uint EndMarker = 0xFFFFFFFF;

    /// <summary>Free byte ranges [start, end) of the filesystem that starts at <paramref name="offset"/>, or null when none is found.</summary>
    public static List<(long Start, long End)>? Read(SafeFileHandle device, long offset, long length)
    {
        var boot = new byte[512];
        if (length < 4096 || Posix.PRead(device, boot, offset) != boot.Length || !boot.AsSpan(3, 8).SequenceEqual("NTFS    "u8))
        {
            return null;
        }

        int bytesPerSector = BinaryPrimitives.ReadUInt16LittleEndian(boot.AsSpan(0x0B));
        int sectorsCode = boot[0x0D];
        long sectorsPerCluster = sectorsCode <= 0x80 ? sectorsCode : 1L << (256 - sectorsCode);
        long totalSectors = BinaryPrimitives.ReadInt64LittleEndian(boot.AsSpan(0x28));
        long mftCluster = BinaryPrimitives.ReadInt64LittleEndian(boot.AsSpan(0x30));
        int recordCode = (sbyte)boot[0x40];
        if (bytesPerSector is not (512 or 1024 or 2048 or 4096) || sectorsPerCluster is <= 0 or > 4096 || totalSectors <= 0 || totalSectors > length / bytesPerSector)
        {
            return null;
        }

        long clusterSize = bytesPerSector * sectorsPerCluster;
        long recordSize = recordCode < 0 ? (recordCode < -31 ? 0 : 1L << -recordCode) : recordCode * clusterSize;
        long clusters = totalSectors / sectorsPerCluster;
        if (clusterSize > 2 << 20 || recordSize is not (1024 or 2048 or 4096) || mftCluster <= 0 || mftCluster >= clusters)
        {
            return null;
        }

        // Record 6 lies in the MFT's first run, which always holds the system files' records.
        var record = new byte[recordSize];
        if (Posix.PRead(device, record, offset + (mftCluster * clusterSize) + (BitmapRecord * recordSize)) != record.Length || !ApplyFixups(record)
            || FindData(record) is not { } runs)
        {
            return null;
        }

        long bitmapBytes = (clusters + 7) / 8;
        if (bitmapBytes > 512L << 20)
        {
            return null;
        }

        var bitmap = new byte[bitmapBytes];
        long at = 0;
        foreach (var (lcn, count) in runs)
        {
            if (at >= bitmapBytes)
            {
                break;
            }

            if (lcn < 0 || count > clusters || lcn > clusters - count)
            {
                return null; // a sparse or out-of-range run in the bitmap: not understood
            }

            int n = (int)Math.Min(count * clusterSize, bitmapBytes - at);
            if (Posix.PRead(device, bitmap.AsSpan((int)at, n), offset + (lcn * clusterSize)) != n)
            {
                return null;
            }

            at += n;
        }

        if (at < bitmapBytes)
        {
            return null;
        }

        var free = new List<(long, long)>();
        for (long c = 0; c < clusters;)
        {
            if ((bitmap[c >> 3] & (1 << (int)(c & 7))) != 0)
            {
                c++;
                continue;
            }

            long first = c;
            while (c < clusters && (bitmap[c >> 3] & (1 << (int)(c & 7))) == 0)
            {
                c++;
            }

            free.Add((offset + (first * clusterSize), offset + (c * clusterSize)));
        }

        return free;
    }

    /// <summary>
    /// Checks and undoes the update sequence of a FILE record: the last two bytes of each 512-byte stride hold the
    /// sequence number, and the array after it holds the bytes they replaced. False when the record is torn or no record.
    /// </summary>
    private static bool ApplyFixups(byte[] record)
    {
        if (!record.AsSpan(0, 4).SequenceEqual("FILE"u8))
        {
            return false;
        }

        int usaOffset = BinaryPrimitives.ReadUInt16LittleEndian(record.AsSpan(4));
        int usaCount = BinaryPrimitives.ReadUInt16LittleEndian(record.AsSpan(6));
        if (usaCount != (record.Length / 512) + 1 || usaOffset < 8 || usaOffset + (usaCount * 2) > record.Length)
        {
            return false;
        }

        var usn = record.AsSpan(usaOffset, 2);
        for (int i = 1; i < usaCount; i++)
        {
            var tail = record.AsSpan((i * 512) - 2, 2);
            if (!tail.SequenceEqual(usn))
            {
                return false;
            }

            record.AsSpan(usaOffset + (i * 2), 2).CopyTo(tail);
        }

        return true;
    }

    /// <summary>The data runs (first cluster, cluster count) of the record's unnamed non-resident $DATA attribute, or null.</summary>
    private static List<(long Lcn, long Count)>? FindData(byte[] record)
    {
        int at = BinaryPrimitives.ReadUInt16LittleEndian(record.AsSpan(0x14));
        int used = (int)Math.Min(BinaryPrimitives.ReadUInt32LittleEndian(record.AsSpan(0x18)), (uint)record.Length);
        while (at + 16 <= used)
        {
            uint type = BinaryPrimitives.ReadUInt32LittleEndian(record.AsSpan(at));
            int attributeLength = (int)Math.Min(BinaryPrimitives.ReadUInt32LittleEndian(record.AsSpan(at + 4)), int.MaxValue);
            if (type == EndMarker || type == AttributeList || attributeLength < 16 || at + attributeLength > used)
            {
                return null; // the end without a $DATA, an attribute list (data elsewhere), or a damaged record
            }

            bool nonResident = record[at + 8] != 0;
            int nameLength = record[at + 9];
            if (type == DataAttribute && nameLength == 0)
            {
                if (!nonResident || attributeLength < 0x40 || BinaryPrimitives.ReadInt64LittleEndian(record.AsSpan(at + 0x10)) != 0)
                {
                    return null; // resident, or not the attribute's first piece
                }

                int runsAt = BinaryPrimitives.ReadUInt16LittleEndian(record.AsSpan(at + 0x20));
                return runsAt < 0x40 || runsAt >= attributeLength ? null : DecodeRuns(record.AsSpan(at + runsAt, attributeLength - runsAt));
            }

            at += attributeLength;
        }

        return null;
    }

    /// <summary>
    /// Decodes a run list: a header byte whose low nibble is the size of the run's length and high nibble the size of
    /// its first cluster's offset from the previous run's (signed; 0 for a sparse run, returned as -1).
    /// </summary>
    private static List<(long Lcn, long Count)>? DecodeRuns(ReadOnlySpan<byte> list)
    {
        var runs = new List<(long, long)>();
        long lcn = 0;
        int at = 0;
        while (at < list.Length && list[at] != 0)
        {
            int lengthSize = list[at] & 0xF, offsetSize = list[at] >> 4;
            if (lengthSize is 0 or > 8 || offsetSize > 8 || at + 1 + lengthSize + offsetSize > list.Length)
            {
                return null;
            }

            long count = 0;
            for (int i = lengthSize - 1; i >= 0; i--)
            {
                count = (count << 8) | list[at + 1 + i];
            }

            if (offsetSize == 0)
            {
                runs.Add((-1, count));
            }
            else
            {
                long delta = (sbyte)list[at + lengthSize + offsetSize]; // the top byte carries the sign
                for (int i = offsetSize - 2; i >= 0; i--)
                {
                    delta = (delta << 8) | list[at + 1 + lengthSize + i];
                }

                lcn += delta;
                runs.Add((lcn, count));
            }

            if (count <= 0)
            {
                return null;
            }

            at += 1 + lengthSize + offsetSize;
        }

        return runs;
    }
}
