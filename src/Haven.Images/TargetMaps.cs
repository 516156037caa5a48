using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;
using Haven.Core;
using Haven.Core.Posix;
using Haven.Repository.Crypto;

namespace Haven.Images;

/// <summary>
/// What tells whether anything wrote a target since Haven last saw it: for an image file its inode, size and change
/// time (the kernel sets it on every write, and no program can set it back); for a block device the sectors the
/// kernel has written to it since boot (<c>/sys/dev/block/M:m/stat</c>) and the boot's id (the count restarts at
/// boot, and another system may have run in between); for a loop device also the file behind it.
/// </summary>
public sealed record TargetStamp(
    [property: JsonPropertyName("kind")] string Kind,
    [property: JsonPropertyName("size")] long Size,
    [property: JsonPropertyName("inode")] ulong Inode,
    [property: JsonPropertyName("ctime_ns")] long ChangeTimeNs,
    [property: JsonPropertyName("device")] string? Device,
    [property: JsonPropertyName("sectors_written")] long SectorsWritten,
    [property: JsonPropertyName("boot_id")] string? BootId)
{
    /// <summary>The stamp of <paramref name="realPath"/> now, or null when it has none (a device without its counters).</summary>
    public static TargetStamp? Of(string realPath)
    {
        if (!Posix.TryLStat(PosixPath.FromString(realPath), out var stat, out _))
        {
            return null;
        }

        if (stat.Type == FileType.Regular)
        {
            return new TargetStamp("file", stat.Size, stat.Inode, stat.ChangeTimeNs, null, 0, null);
        }

        if (stat.Type != FileType.BlockDevice)
        {
            return null;
        }

        var (major, minor) = Posix.SplitDevice(stat.RDev);
        string device = $"{major}:{minor}";
        try
        {
            // Field 7 of the block layer's statistics: sectors written.
            var fields = File.ReadAllText($"/sys/dev/block/{device}/stat").Split(' ', StringSplitOptions.RemoveEmptyEntries);
            string bootId = File.ReadAllText("/proc/sys/kernel/random/boot_id").Trim();
            // A loop device can be detached and attached to another file, and its counters would not show it.
            string backing = $"/sys/dev/block/{device}/loop/backing_file";
            if (File.Exists(backing))
            {
                device += " " + File.ReadAllText(backing).Trim();
            }

            using var handle = Posix.OpenRead(PosixPath.FromString(realPath));
            return new TargetStamp("device", Posix.SeekEnd(handle), 0, 0, device, long.Parse(fields[6], System.Globalization.CultureInfo.InvariantCulture), bootId);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException or IndexOutOfRangeException or PosixException)
        {
            return null;
        }
    }

    /// <summary>Why <paramref name="now"/> shows a write since this stamp, or null when it shows none.</summary>
    public string? ChangedIn(TargetStamp? now) => now is null ? "its write counters cannot be read"
        : now.Kind != Kind || now.Inode != Inode || now.Device != Device ? "it is no longer the same file or device"
        : now.Size != Size ? "its size changed"
        : now.BootId != BootId ? "the machine was restarted since, and its write counter with it"
        : now.ChangeTimeNs != ChangeTimeNs || now.SectorsWritten != SectorsWritten ? "it was written since"
        : null;
}

/// <summary>A target's changed-block map: the image snapshot whose data blocks it holds, and when that was true.</summary>
/// <param name="Snapshot">The image snapshot; the target differs from it only where <see cref="TargetStamp"/> shows a write.</param>
/// <param name="UnusedAreZero">Set when Haven wrote the target (a restore): every block that is not data in the
/// snapshot holds zeros. A backup reads no unused block, so after one, free blocks hold whatever they held.</param>
public sealed record TargetMap(
    [property: JsonPropertyName("target")] string Target,
    [property: JsonPropertyName("snapshot")] string Snapshot,
    [property: JsonPropertyName("unused_are_zero")] bool UnusedAreZero,
    [property: JsonPropertyName("stamp")] TargetStamp Stamp,
    [property: JsonPropertyName("mac")] string? Mac = null);

[JsonSerializable(typeof(TargetMap))]
internal sealed partial class TargetMapJson : JsonSerializerContext;

/// <summary>
/// The changed-block maps of the targets Haven writes or reads, one file per target in the repository's cache folder
/// (<c>targets/</c>), each authenticated with a key derived from the repository's keys: a map that was edited,
/// copied from another repository, or left half-written does not validate, and the target is then read or written
/// whole. A map is forgotten before Haven writes its target, so a restore that stops half-way leaves none.
/// </summary>
public sealed class TargetMaps
{
    private readonly string _folder;
    private readonly byte[] _macKey;

    public TargetMaps(string repositoryCacheFolder, MasterKey key)
    {
        _folder = Path.Combine(repositoryCacheFolder, "targets");
        _macKey = HMACSHA256.HashData(key.IdKey, "haven target map v1"u8);
    }

    /// <summary>The map of <paramref name="realPath"/> if it validates: present, authentic, and no write since.</summary>
    public (TargetMap? Map, string? Reason) Find(string realPath)
    {
        string file = FileOf(realPath);
        if (!File.Exists(file))
        {
            return (null, null);
        }

        TargetMap? map;
        try
        {
            map = JsonSerializer.Deserialize(File.ReadAllBytes(file), TargetMapJson.Default.TargetMap);
        }
        catch (Exception e) when (e is IOException or JsonException or UnauthorizedAccessException)
        {
            return (null, "its changed-block map cannot be read");
        }

        if (map?.Mac is not { Length: 64 } mac || !mac.All(char.IsAsciiHexDigit) || map.Target != realPath || map.Stamp is null
            || !CryptographicOperations.FixedTimeEquals(Convert.FromHexString(mac), Mac(map)))
        {
            return (null, "its changed-block map fails its checksum");
        }

        return map.Stamp.ChangedIn(TargetStamp.Of(realPath)) is { } changed ? (null, changed) : (map, null);
    }

    /// <summary>Records that <paramref name="realPath"/> holds <paramref name="snapshot"/> as of <paramref name="stamp"/>.</summary>
    public void Record(string realPath, ObjectId snapshot, bool unusedAreZero, TargetStamp stamp)
    {
        var map = new TargetMap(realPath, snapshot.ToString(), unusedAreZero, stamp);
        map = map with { Mac = Convert.ToHexStringLower(Mac(map)) };
        Directory.CreateDirectory(_folder);
        string file = FileOf(realPath);
        string temporary = file + ".tmp";
        File.WriteAllBytes(temporary, JsonSerializer.SerializeToUtf8Bytes(map, TargetMapJson.Default.TargetMap));
        File.Move(temporary, file, overwrite: true);
    }

    /// <summary>Forgets the map of <paramref name="realPath"/>: called before Haven writes it.</summary>
    public void Forget(string realPath)
    {
        if (Directory.Exists(_folder))
        {
            File.Delete(FileOf(realPath));
        }
    }

    private string FileOf(string realPath) => Path.Combine(_folder, Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(realPath)))[..32]);

    private byte[] Mac(TargetMap map) => HMACSHA256.HashData(_macKey, JsonSerializer.SerializeToUtf8Bytes(map with { Mac = null }, TargetMapJson.Default.TargetMap));
}
