using System.Buffers.Binary;
using System.Diagnostics;
using Haven.Core;
using Haven.Core.Posix;
using Microsoft.Win32.SafeHandles;

namespace Haven.Images;

/// <summary>
/// Makes a restored image use a target larger than the image. A GPT's backup header and entry array move to the new end
/// of the disk (its last usable sector follows); with <c>grow</c>, the last partition (GPT, or the MBR primary that ends
/// last) is extended to the end, aligned down to 1 MiB, and an ext2/3/4 filesystem on it (or on the whole target, when it
/// has no partition table) is checked and grown with e2fsck and resize2fs. 512-byte sectors. Other filesystems keep
/// their size and are named, so that they can be grown with their own tool.
/// </summary>
public static class PartitionGrow
{
    private const int Sector = 512;
    private const long Align = 2048; // sectors: 1 MiB

    /// <summary>Adapts <paramref name="target"/> (already holding the image's <paramref name="imageSize"/> bytes) to its size; returns what was done.</summary>
    public static IReadOnlyList<string> Apply(string target, long imageSize, bool grow)
    {
        var done = new List<string>();
        string real = RealPath.Of(target);
        long fsStart = 0, fsLength;
        using (var disk = Posix.OpenWrite(PosixPath.FromString(real)))
        {
            long size = Posix.SeekEnd(disk);
            fsLength = size;
            if (size <= imageSize)
            {
                return done;
            }

            var head = new byte[(int)Math.Min(imageSize, PartitionTable.HeadBytes)];
            int n = Posix.PRead(disk, head, 0);
            var (kind, _) = PartitionTable.Parse(head.AsSpan(0, n), imageSize);
            Partition? grown = kind switch
            {
                "gpt" => GrowGpt(disk, head, imageSize, size, grow, done),
                "mbr" when grow => GrowMbr(disk, head, size, done),
                _ => null,
            };
            Posix.FSync(disk);
            if (!grow || (kind != "none" && grown is null))
            {
                return done;
            }

            if (grown is not null)
            {
                (fsStart, fsLength) = (grown.Start, grown.Length);
            }

            if (!IsExt(disk, fsStart))
            {
                done.Add($"the filesystem {(grown is null ? "of the image" : $"on partition {grown.Number}")} is not ext2/3/4 and keeps its size; grow it with its own tool");
                return done;
            }
        }

        done.Add(GrowExt(real, fsStart, fsLength));
        return done;
    }

    private static Partition? GrowGpt(SafeFileHandle disk, byte[] head, long imageSize, long size, bool grow, List<string> done)
    {
        var header = head.AsSpan(Sector, Sector).ToArray();
        int headerSize = BinaryPrimitives.ReadInt32LittleEndian(header.AsSpan(12));
        long entriesLba = BinaryPrimitives.ReadInt64LittleEndian(header.AsSpan(72));
        int count = BinaryPrimitives.ReadInt32LittleEndian(header.AsSpan(80));
        int entrySize = BinaryPrimitives.ReadInt32LittleEndian(header.AsSpan(84));
        long entriesBytes = (long)count * entrySize;
        if (headerSize is < 92 or > Sector || count is <= 0 or > 1024 || entrySize is < 128 or > 4096 || entriesLba < 2
            || (entriesLba * Sector) + entriesBytes > head.Length || HeaderCrc(header, headerSize) != BinaryPrimitives.ReadUInt32LittleEndian(header.AsSpan(16)))
        {
            done.Add("the GPT header is damaged or unusual; the partition table was left as it is");
            return null;
        }

        var entries = head.AsSpan((int)(entriesLba * Sector), (int)entriesBytes).ToArray();
        long entrySectors = (entriesBytes + Sector - 1) / Sector;
        long lastLba = (size / Sector) - 1;
        long backupEntriesLba = lastLba - entrySectors;
        long lastUsable = backupEntriesLba - 1;
        Partition? grown = null;
        if (grow)
        {
            int last = -1;
            long lastEnd = -1;
            for (int i = 0; i < count; i++)
            {
                var e = entries.AsSpan(i * entrySize, entrySize);
                long end = BinaryPrimitives.ReadInt64LittleEndian(e[40..]);
                if (!e[..16].SequenceEqual(new byte[16]) && end > lastEnd)
                {
                    (last, lastEnd) = (i, end);
                }
            }

            if (last >= 0)
            {
                var e = entries.AsSpan(last * entrySize, entrySize);
                long first = BinaryPrimitives.ReadInt64LittleEndian(e[32..]);
                long newEnd = ((lastUsable + 1) / Align * Align) - 1;
                if (newEnd > lastEnd)
                {
                    BinaryPrimitives.WriteInt64LittleEndian(e[40..], newEnd);
                    grown = new Partition(last + 1, first * Sector, (newEnd - first + 1) * Sector, new Guid(e[..16]).ToString(), null);
                    done.Add($"partition {last + 1} grown from {Mib((lastEnd - first + 1) * Sector)} to {Mib(grown.Length)}");
                }
            }
        }

        uint entriesCrc = Crc32(entries);
        BinaryPrimitives.WriteInt64LittleEndian(header.AsSpan(32), lastLba);
        BinaryPrimitives.WriteInt64LittleEndian(header.AsSpan(48), lastUsable);
        BinaryPrimitives.WriteUInt32LittleEndian(header.AsSpan(88), entriesCrc);
        SetHeaderCrc(header, headerSize);

        var backup = (byte[])header.Clone();
        BinaryPrimitives.WriteInt64LittleEndian(backup.AsSpan(24), lastLba);
        BinaryPrimitives.WriteInt64LittleEndian(backup.AsSpan(32), 1);
        BinaryPrimitives.WriteInt64LittleEndian(backup.AsSpan(72), backupEntriesLba);
        SetHeaderCrc(backup, headerSize);

        // The old backup header is cleared first, so that no tool finds a stale table at the image's old end.
        long oldLast = (imageSize / Sector) - 1;
        Posix.PWriteAll(disk, new byte[Sector], oldLast * Sector);
        var paddedEntries = new byte[entrySectors * Sector];
        entries.CopyTo(paddedEntries, 0);
        Posix.PWriteAll(disk, paddedEntries, entriesLba * Sector);
        Posix.PWriteAll(disk, header, Sector);
        Posix.PWriteAll(disk, paddedEntries, backupEntriesLba * Sector);
        Posix.PWriteAll(disk, backup, lastLba * Sector);

        // The protective MBR's one partition spans the disk (or as much as 32 bits can say).
        var mbr = head.AsSpan(0, Sector).ToArray();
        if (mbr[446 + 4] == 0xEE)
        {
            BinaryPrimitives.WriteUInt32LittleEndian(mbr.AsSpan(446 + 12), (uint)Math.Min(lastLba, uint.MaxValue));
            Posix.PWriteAll(disk, mbr, 0);
        }

        done.Insert(0, $"GPT moved to the end of the {Mib(size)} target");
        return grown;
    }

    private static Partition? GrowMbr(SafeFileHandle disk, byte[] head, long size, List<string> done)
    {
        int last = -1;
        long lastEnd = -1;
        for (int i = 0; i < 4; i++)
        {
            var e = head.AsSpan(446 + (16 * i), 16);
            long end = (long)BinaryPrimitives.ReadUInt32LittleEndian(e[8..]) + BinaryPrimitives.ReadUInt32LittleEndian(e[12..]);
            if (e[4] != 0 && end > lastEnd)
            {
                (last, lastEnd) = (i, end);
            }
        }

        if (last < 0)
        {
            return null;
        }

        var entry = head.AsSpan(446 + (16 * last), 16);
        if (entry[4] is 0x05 or 0x0F or 0x85)
        {
            done.Add($"partition {last + 1} is an extended partition; its logical partitions are not grown");
            return null;
        }

        long first = BinaryPrimitives.ReadUInt32LittleEndian(entry[8..]);
        long newEnd = Math.Min(size / Sector, uint.MaxValue) / Align * Align; // exclusive
        if (newEnd <= lastEnd)
        {
            return null;
        }

        BinaryPrimitives.WriteUInt32LittleEndian(entry[12..], (uint)(newEnd - first));
        entry[5] = 0xFE; // the end's cylinder-head-sector address: beyond what CHS can say, as for any large disk
        entry[6] = 0xFF;
        entry[7] = 0xFF;
        Posix.PWriteAll(disk, head.AsSpan(0, Sector), 0);
        var grown = new Partition(last + 1, first * Sector, (newEnd - first) * Sector, $"0x{entry[4]:x2}", null);
        done.Add($"partition {last + 1} grown from {Mib((lastEnd - first) * Sector)} to {Mib(grown.Length)}");
        return grown;
    }

    private static bool IsExt(SafeFileHandle disk, long start)
    {
        var superblock = new byte[1024];
        return Posix.PRead(disk, superblock, start + 1024) == superblock.Length && Ext4Superblock.Parse(superblock) is not null;
    }

    /// <summary>Checks and grows the ext filesystem at <paramref name="start"/> (through a loop device when it is not the whole file).</summary>
    private static string GrowExt(string target, long start, long length)
    {
        bool whole = start == 0 && Posix.LStat(PosixPath.FromString(target)).Type == FileType.Regular;
        string device = target;
        if (!whole)
        {
            var (code, output) = Tool.Run("losetup", "--find", "--show", "--offset", start.ToString(System.Globalization.CultureInfo.InvariantCulture), "--sizelimit", length.ToString(System.Globalization.CultureInfo.InvariantCulture), target);
            if (code != 0)
            {
                return $"the ext filesystem keeps its size: no loop device for it ({output.Trim()}); grow it with resize2fs";
            }

            device = output.Trim();
        }

        try
        {
            // resize2fs wants a checked filesystem; -p repairs only what is safe (a journal to replay, counts).
            var (fsck, fsckOutput) = Tool.Run("e2fsck", "-f", "-p", device);
            if (fsck is not (0 or 1))
            {
                return $"the ext filesystem keeps its size: e2fsck found problems it would not repair alone (exit {fsck}): {Tool.LastLine(fsckOutput)}";
            }

            var (resize, resizeOutput) = Tool.Run("resize2fs", device);
            return resize == 0 ? $"ext filesystem grown to {Mib(length)}" : $"the ext filesystem keeps its size: resize2fs failed (exit {resize}): {Tool.LastLine(resizeOutput)}";
        }
        finally
        {
            if (!whole)
            {
                Tool.Run("losetup", "--detach", device);
            }
        }
    }

    private static string Mib(long bytes) => $"{bytes / (1 << 20)} MiB";

    private static uint HeaderCrc(byte[] header, int headerSize)
    {
        var copy = header.AsSpan(0, headerSize).ToArray();
        copy.AsSpan(16, 4).Clear();
        return Crc32(copy);
    }

    private static void SetHeaderCrc(byte[] header, int headerSize)
    {
        header.AsSpan(16, 4).Clear();
        BinaryPrimitives.WriteUInt32LittleEndian(header.AsSpan(16), Crc32(header.AsSpan(0, headerSize)));
    }

    private static readonly uint[] CrcTable = MakeCrcTable();

    private static uint[] MakeCrcTable()
    {
        var table = new uint[256];
        for (uint i = 0; i < 256; i++)
        {
            uint c = i;
            for (int k = 0; k < 8; k++)
            {
                c = (c & 1) != 0 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            }

            table[i] = c;
        }

        return table;
    }

    /// <summary>The CRC-32 of GPT (and zip, and Ethernet): reflected, polynomial 0x04C11DB7.</summary>
    public static uint Crc32(ReadOnlySpan<byte> data)
    {
        uint c = 0xFFFFFFFFu;
        foreach (byte b in data)
        {
            c = CrcTable[(c ^ b) & 0xFF] ^ (c >> 8);
        }

        return c ^ 0xFFFFFFFFu;
    }
}
