using System.Buffers.Binary;
using Haven.Core.Posix;
using Microsoft.Win32.SafeHandles;

namespace Haven.Images;

/// <summary>
/// The free clusters of an NTFS filesystem, from its own allocation bitmap: the unnamed data of the $Bitmap file
/// (MFT record 6), one bit per cluster, set when the cluster is used. The record is found through the boot sector's
/// MFT location and record size; its update-sequence fixups are checked and applied, and its data runs decoded.
/// The backup boot sector after the last cluster is never free. A volume marked dirty in $Volume (record 3) is read
/// whole, since clusters its log still has to record may look free. Anything this reader does not understand (an
/// attribute list on $Bitmap, odd sizes, a failed fixup, a record that is not the one it should be, a bitmap that does
/// not mark the boot sector, the MFT and itself in use) gives no free ranges: every block is read.
/// </summary>
public static class NtfsFreeSpace
{
    private const int VolumeRecord = 3;
    private const int BitmapRecord = 6;
    private const uint VolumeInformation = 0x70;
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
        // 1 to 128 as a power of two, or 0xF4-0xFF for 2^(256 - code): clusters of up to 2 MiB.
        long sectorsPerCluster = sectorsCode >= 0xF4 ? 1L << (256 - sectorsCode) : sectorsCode is > 0 and <= 0x80 && (sectorsCode & (sectorsCode - 1)) == 0 ? sectorsCode : 0;
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

        // Records 3 and 6 lie in the MFT's first run, which always holds the system files' records; each must say it
        // is that record. A volume not cleanly unmounted (dirty) may have clusters in use that its bitmap does not show
        // until its log is replayed: it is read whole.
        long bitmapBytes = (clusters + 7) / 8;
        if (bitmapBytes > 512L << 20
            || ReadRecord(device, offset + (mftCluster * clusterSize), recordSize, VolumeRecord) is not { } volume || Dirty(volume) is not false
            || ReadRecord(device, offset + (mftCluster * clusterSize), recordSize, BitmapRecord) is not { } record
            || FindData(record, bitmapBytes) is not { } runs)
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

        // What must be in use: cluster 0 (the boot sector), the MFT's first cluster, and the bitmap's own clusters.
        bool Used(long c) => (bitmap[c >> 3] & (1 << (int)(c & 7))) != 0;
        if (at < bitmapBytes || !Used(0) || !Used(mftCluster) || runs.Any(r => !Used(r.Lcn) || !Used(r.Lcn + r.Count - 1)))
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

    /// <summary>MFT record <paramref name="number"/>, fixed up, when it is in use, a base record, and says it is that number.</summary>
    private static byte[]? ReadRecord(SafeFileHandle device, long mft, long recordSize, int number)
    {
        var record = new byte[recordSize];
        if (Posix.PRead(device, record, mft + (number * recordSize)) != record.Length || !ApplyFixups(record)
            || (BinaryPrimitives.ReadUInt16LittleEndian(record.AsSpan(0x16)) & 1) == 0 || BinaryPrimitives.ReadUInt64LittleEndian(record.AsSpan(0x20)) != 0
            || (BinaryPrimitives.ReadUInt16LittleEndian(record.AsSpan(4)) >= 0x30 && BinaryPrimitives.ReadUInt32LittleEndian(record.AsSpan(0x2C)) != number))
        {
            return null;
        }

        return record;
    }

    /// <summary>The dirty flag of $Volume's resident $VOLUME_INFORMATION, or null when it cannot be read.</summary>
    private static bool? Dirty(byte[] volume)
    {
        if (FindAttribute(volume, VolumeInformation) is not { } at || volume[at + 8] != 0 || BinaryPrimitives.ReadUInt32LittleEndian(volume.AsSpan(at + 4)) < 0x18)
        {
            return null;
        }

        int valueLength = (int)Math.Min(BinaryPrimitives.ReadUInt32LittleEndian(volume.AsSpan(at + 0x10)), 1024);
        int valueOffset = BinaryPrimitives.ReadUInt16LittleEndian(volume.AsSpan(at + 0x14));
        return valueLength < 12 || at + valueOffset + 12 > volume.Length ? null : (BinaryPrimitives.ReadUInt16LittleEndian(volume.AsSpan(at + valueOffset + 10)) & 1) != 0;
    }

    /// <summary>
    /// The data runs (first cluster, cluster count) of the record's unnamed non-resident $DATA attribute, when it is the
    /// attribute's only piece and holds and has initialised at least <paramref name="bytes"/>; or null.
    /// </summary>
    private static List<(long Lcn, long Count)>? FindData(byte[] record, long bytes)
    {
        if (FindAttribute(record, DataAttribute) is not { } at || record[at + 8] == 0)
        {
            return null;
        }

        int attributeLength = (int)BinaryPrimitives.ReadUInt32LittleEndian(record.AsSpan(at + 4));
        if (attributeLength < 0x40 || BinaryPrimitives.ReadInt64LittleEndian(record.AsSpan(at + 0x10)) != 0
            || BinaryPrimitives.ReadInt64LittleEndian(record.AsSpan(at + 0x30)) < bytes || BinaryPrimitives.ReadInt64LittleEndian(record.AsSpan(at + 0x38)) < bytes)
        {
            return null; // not the first piece, or shorter than the bitmap must be
        }

        int runsAt = BinaryPrimitives.ReadUInt16LittleEndian(record.AsSpan(at + 0x20));
        return runsAt < 0x40 || runsAt >= attributeLength ? null : DecodeRuns(record.AsSpan(at + runsAt, attributeLength - runsAt));
    }

    /// <summary>Where the record's first unnamed attribute of <paramref name="wanted"/> type starts, or null (also for an attribute list).</summary>
    private static int? FindAttribute(byte[] record, uint wanted)
    {
        int at = BinaryPrimitives.ReadUInt16LittleEndian(record.AsSpan(0x14));
        int used = (int)Math.Min(BinaryPrimitives.ReadUInt32LittleEndian(record.AsSpan(0x18)), (uint)record.Length);
        if (at < 0x18 || (at & 7) != 0)
        {
            return null;
        }

        while (at + 16 <= used)
        {
            uint type = BinaryPrimitives.ReadUInt32LittleEndian(record.AsSpan(at));
            uint attributeLength = BinaryPrimitives.ReadUInt32LittleEndian(record.AsSpan(at + 4));
            if (type == EndMarker || type == AttributeList || attributeLength < 16 || (attributeLength & 7) != 0 || attributeLength > (uint)(used - at))
            {
                return null; // the end without it, an attribute list (attributes elsewhere), or a damaged record
            }

            if (type == wanted && record[at + 9] == 0)
            {
                return at;
            }

            at += (int)attributeLength;
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
