using System.Buffers.Binary;
using Haven.Core.Posix;
using Microsoft.Win32.SafeHandles;

namespace Haven.Images;

/// <summary>One partition: its number, first byte and length, and its type (MBR type byte or GPT type GUID).</summary>
public sealed record Partition(int Number, long Start, long Length, string Type, string? Name);

/// <summary>
/// The partition table at the start of a disk image: GPT (a protective MBR and the "EFI PART" header at LBA 1) or MBR
/// (the 0x55AA signature and four primary entries). 512-byte sectors. Parsed from the image's first bytes
/// (<see cref="HeadBytes"/>), which hold a standard GPT's entry array too.
/// </summary>
public static class PartitionTable
{
    private const int Sector = 512;

    /// <summary>How much of the start of an image the table is parsed from.</summary>
    public const int HeadBytes = 1 << 20;

    /// <summary>Reads the start of <paramref name="disk"/> and parses its table.</summary>
    public static (string Kind, IReadOnlyList<Partition> Partitions) Read(SafeFileHandle disk, long size)
    {
        var head = new byte[(int)Math.Min(size, HeadBytes)];
        int n = head.Length == 0 ? 0 : Posix.PRead(disk, head, 0);
        return Parse(head.AsSpan(0, n), size);
    }

    /// <summary>"gpt", "mbr" or "none", and the partitions, from the first bytes of an image of <paramref name="size"/> bytes.</summary>
    public static (string Kind, IReadOnlyList<Partition> Partitions) Parse(ReadOnlySpan<byte> head, long size)
    {
        if (head.Length < 2 * Sector || head[510] != 0x55 || head[511] != 0xAA)
        {
            return ("none", []);
        }

        if (head.Slice(Sector, 8).SequenceEqual("EFI PART"u8))
        {
            return ("gpt", ParseGpt(head, size));
        }

        // Each entry's first byte is its boot flag, 0x00 or 0x80; anything else there is a filesystem's boot code.
        for (int i = 0; i < 4; i++)
        {
            if (head[446 + (16 * i)] is not (0x00 or 0x80))
            {
                return ("none", []);
            }
        }

        var partitions = new List<Partition>();
        for (int i = 0; i < 4; i++)
        {
            var entry = head.Slice(446 + (16 * i), 16);
            byte type = entry[4];
            long first = BinaryPrimitives.ReadUInt32LittleEndian(entry[8..]);
            long sectors = BinaryPrimitives.ReadUInt32LittleEndian(entry[12..]);
            if (type != 0 && sectors > 0)
            {
                partitions.Add(new Partition(i + 1, first * Sector, sectors * Sector, $"0x{type:x2}", null));
            }
        }

        // A boot sector of a filesystem also ends in 0x55AA; without any partition entry it is no table.
        return partitions.Count == 0 ? ("none", []) : ("mbr", partitions);
    }

    private static List<Partition> ParseGpt(ReadOnlySpan<byte> head, long size)
    {
        var header = head.Slice(Sector, Sector);
        long entriesLba = BinaryPrimitives.ReadInt64LittleEndian(header[72..]);
        int count = BinaryPrimitives.ReadInt32LittleEndian(header[80..]);
        int entrySize = BinaryPrimitives.ReadInt32LittleEndian(header[84..]);
        var partitions = new List<Partition>();
        if (count is <= 0 or > 1024 || entrySize is < 128 or > 4096 || entriesLba <= 0
            || (entriesLba * Sector) + ((long)count * entrySize) > Math.Min(size, head.Length))
        {
            return partitions;
        }

        var entries = head.Slice((int)(entriesLba * Sector), count * entrySize);
        for (int i = 0; i < count; i++)
        {
            var e = entries.Slice(i * entrySize, entrySize);
            var type = new Guid(e[..16]);
            if (type == Guid.Empty)
            {
                continue;
            }

            long first = BinaryPrimitives.ReadInt64LittleEndian(e[32..]);
            long last = BinaryPrimitives.ReadInt64LittleEndian(e[40..]);
            string name = System.Text.Encoding.Unicode.GetString(e.Slice(56, 72)).TrimEnd('\0');
            partitions.Add(new Partition(i + 1, first * Sector, (last - first + 1) * Sector, type.ToString(), name));
        }

        return partitions;
    }
}
