using System.Diagnostics;
using System.Text.Json.Nodes;
using Haven.Core;
using Haven.Testing;
using Xunit;

namespace Haven.Cli.Tests;

/// <summary>
/// Image backups of real ext4 filesystems, made with mkfs.ext4 and filled and changed through loop mounts (root and
/// loop devices, as in CI); restored images are checked with e2fsck and by mounting them.
/// </summary>
public sealed class ImageTests
{
    [Fact]
    public void AnExt4Image_BacksUpIncrementally_ByGeneration_AndBothGenerationsRestoreIntoSameSizeAndLargerFiles()
    {
        using var cli = new HavenCli();
        cli.Expect(0, "init");
        string disk = Path.Combine(cli.Root, "disk.img");
        // Written out (not sparse), so unused space is found through ext4's bitmaps rather than as holes.
        Sh($"dd if=/dev/zero of={disk} bs=1M count=256 status=none && mkfs.ext4 -q -F -E nodiscard -b 4096 {disk}"); // mkfs would punch holes into the file

        // Generation 1: 120 files of 256 KiB of random data (30 MiB) and a tree of small ones.
        string files = Path.Combine(cli.Root, "gen1");
        Directory.CreateDirectory(files);
        TestData.WriteRandomFiles(files, 120, 256 * 1024, seed: 7);
        TestTree.CreateHardCases(Path.Combine(files, "tree"), includeLargeFile: false, seed: 8);
        WithMount(cli, disk, mount => Sh($"cp -a {files}/. {mount}/"));
        var first = cli.Expect(0, "image", "backup", disk, "--json").Json;
        Assert.Equal(1u, (uint)first["image"]!["generation"]!);
        long dataBlocks = (long)first["image"]!["blocks_data"]!;
        Assert.True((long)first["image"]!["blocks_free"]! > 2000, first.ToJsonString()); // free ext4 blocks are not read
        Assert.True((long)first["bytes_read"]! < 80L << 20, first.ToJsonString());

        // About 5% of the used blocks change: six of the files are rewritten in place through the mount.
        string gen2 = Path.Combine(cli.Root, "gen2");
        Sh($"cp -a {files} {gen2}");
        var rewritten = Directory.GetFiles(gen2, "file-*").Order(StringComparer.Ordinal).Take(6).ToList();
        foreach (string f in rewritten)
        {
            File.WriteAllBytes(f, TestData.Bytes(256 * 1024, seed: f.GetHashCode()));
        }

        WithMount(cli, disk, mount =>
        {
            foreach (string f in rewritten)
            {
                using var target = new FileStream(Path.Combine(mount, Path.GetFileName(f)), FileMode.Open, FileAccess.Write);
                target.Write(File.ReadAllBytes(f));
            }
        });

        var second = cli.Expect(0, "image", "backup", disk, "--json").Json;
        var image = second["image"]!;
        Assert.Equal(2u, (uint)image["generation"]!);
        long changed = (long)image["blocks_changed"]!;
        Assert.InRange(changed, 24, dataBlocks / 4); // the 1.5 MiB rewritten (24 blocks of 64 KiB), and metadata
        long added = (long)second["bytes_added"]!;
        Assert.InRange(added, 1_500_000, (changed * 65536) + 65536); // only changed blocks are stored (and the block map)

        var info = cli.Expect(0, "image", "info", "latest", "--json").Json;
        Assert.Equal(2, (int)info["format"]!);
        Assert.InRange((long)info["storage_chunks"]!, 1, dataBlocks / 2); // runs of data blocks are stored in chunks of 64 KiB to 1 MiB
        var generations = info["generations"]!.AsArray();
        Assert.Equal([1u, 2u], generations.Select(g => (uint)g!["generation"]!));
        Assert.Equal(changed, (long)generations[1]!["blocks_changed"]!);
        Assert.Equal(changed, (long)generations[1]!["blocks_current"]!);
        Assert.Equal((long)info["kinds"]!.AsObject().Sum(k => (long)k.Value!) - changed, (long)generations[0]!["blocks_current"]!);

        // Files inside the image, without restoring it: listed, and dumped as they were in each generation.
        var listing = cli.Expect(0, "image", "ls", IdOf(second), "/", "--json").Json.AsArray();
        Assert.Contains(listing, e => (string)e!["name"]! == "tree" && (string)e["type"]! == "dir");
        var rewrittenEntry = listing.Single(e => (string)e!["name"]! == Path.GetFileName(rewritten[0]))!;
        Assert.Equal(256 * 1024, (long)rewrittenEntry["size"]!);
        string dumped = Path.Combine(cli.Root, "dumped.bin");
        cli.Expect(0, "image", "dump", IdOf(second), "/" + Path.GetFileName(rewritten[0]), "--output", dumped);
        Assert.Equal(File.ReadAllBytes(rewritten[0]), File.ReadAllBytes(dumped));
        cli.Expect(0, "image", "dump", (string)first["snapshot_id"]!, "/" + Path.GetFileName(rewritten[0]), "--output", dumped);
        Assert.Equal(File.ReadAllBytes(Path.Combine(files, Path.GetFileName(rewritten[0]))), File.ReadAllBytes(dumped));
        Assert.Equal(ExitCodes.NotFound, cli.Run("image", "ls", IdOf(second), "/no/such/folder").ExitCode);

        // Both generations, into a new file of the same size and into a larger existing one.
        string firstId = (string)first["snapshot_id"]!;
        string secondId = (string)second["snapshot_id"]!;
        foreach (var (id, expected) in new[] { (firstId, files), (secondId, gen2) })
        {
            string same = Path.Combine(cli.Root, $"same-{id[..8]}.img");
            string larger = Path.Combine(cli.Root, $"larger-{id[..8]}.img");
            Sh($"truncate -s 300M {larger}");
            cli.Expect(0, "image", "restore", id, "--target", same);
            cli.Expect(0, "image", "restore", id, "--target", larger);
            foreach (string restored in new[] { same, larger })
            {
                Sh($"e2fsck -fn {restored}");
                WithMount(cli, restored, _ => { }, readOnly: true, compareWith: expected);
            }

            Assert.True(new FileInfo(same).Length == 256L << 20);
            Assert.True(Allocated(same) < 120L << 20, "the restored image file stays sparse");
        }
    }

    [Fact]
    public void BytesRepeatedAtAnOffsetThatIsNoMultipleOfTheBlockSize_AreStoredOnce()
    {
        using var cli = new HavenCli();
        cli.Expect(0, "init");
        // 4 MiB of random bytes, 20 KiB of others, and the 4 MiB again: the copy starts 20 KiB into a 64 KiB block.
        var repeated = TestData.Bytes(4 << 20, seed: 41);
        string disk = Path.Combine(cli.Root, "repeats.img");
        File.WriteAllBytes(disk, [.. repeated, .. TestData.Bytes(20 << 10, seed: 42), .. repeated]);

        var backup = cli.Expect(0, "image", "backup", disk, "--json").Json;
        Assert.Equal(129L, (long)backup["image"]!["blocks_data"]!);
        Assert.InRange((long)backup["bytes_added"]!, 4L << 20, 6L << 20); // not the 8 MiB that blocks of 64 KiB would store

        string restored = Path.Combine(cli.Root, "restored.img");
        cli.Expect(0, "image", "restore", "latest", "--target", restored);
        Assert.Equal(File.ReadAllBytes(disk), File.ReadAllBytes(restored));
    }

    [Fact]
    public void CopiesOfFilesInAnExt4Image_AreStoredOnce_ThoughOtherFilesLieBetweenThem()
    {
        using var cli = new HavenCli();
        cli.Expect(0, "init");
        string disk = Path.Combine(cli.Root, "disk.img");
        Sh($"truncate -s 64M {disk} && mkfs.ext4 -q -F -b 4096 {disk}");
        // Twelve files of 150-560 KiB of random bytes, each shorter than most content-defined chunks, then small files
        // of other random bytes, then the twelve again in another folder: the copies start at unrelated offsets.
        string originals = Path.Combine(cli.Root, "originals");
        Directory.CreateDirectory(originals);
        long unique = 0;
        for (int i = 0; i < 12; i++)
        {
            var bytes = TestData.Bytes((150 << 10) + (i * 37 << 10) + (i * 777), seed: 100 + i);
            File.WriteAllBytes(Path.Combine(originals, $"f{i:D2}.bin"), bytes);
            unique += bytes.Length;
        }

        string fillers = Path.Combine(cli.Root, "fillers");
        Directory.CreateDirectory(fillers);
        for (int i = 0; i < 12; i++)
        {
            File.WriteAllBytes(Path.Combine(fillers, $"g{i:D2}.bin"), TestData.Bytes(5000 + (i * 3001), seed: 200 + i));
        }

        // The copies go in reverse order, each followed by a filler, so that no run of them repeats the originals' run.
        string copies = string.Join(" && ", Enumerable.Range(0, 12).Reverse().Select(i => $"cp {originals}/f{i:D2}.bin {{0}}/c/ && cp {fillers}/g{i:D2}.bin {{0}}/c/h{i:D2}.bin && sync"));
        WithMount(cli, disk, mount => Sh($"cp -a {originals} {mount}/a && sync && cp -a {fillers} {mount}/b && mkdir {mount}/c && sync && " + string.Format(copies, mount)));
        var backup = cli.Expect(0, "image", "backup", disk, "--json").Json;
        // Stored once (random bytes do not compress), with the fillers and the metadata: 5.1 MB, where chunks cut by
        // content alone store 9.3 MB.
        long stored = (long)backup["bytes_stored"]!;
        Assert.InRange(stored, unique, unique + (unique / 5));

        string restored = Path.Combine(cli.Root, "restored.img");
        cli.Expect(0, "image", "restore", "latest", "--target", restored);
        Sh($"e2fsck -fn {restored}");
        WithMount(cli, restored, m => Sh($"cmp -s {m}/a/f07.bin {m}/c/f07.bin && cmp -s {originals}/f07.bin {m}/c/f07.bin"), readOnly: true);
    }

    [Fact]
    public void ALaterBackupWithoutABlockSize_KeepsTheSourcesBlockSize_AndStoresOnlyTheChangedBlock()
    {
        using var cli = new HavenCli();
        cli.Expect(0, "init");
        string disk = Path.Combine(cli.Root, "raw.img");
        var bytes = TestData.Bytes(2 << 20, seed: 9);
        File.WriteAllBytes(disk, bytes);
        cli.Expect(0, "image", "backup", disk, "--block-size", "16K");

        bytes[(1 << 20) + 5] ^= 0xFF; // one byte of block 64
        File.WriteAllBytes(disk, bytes);
        var second = cli.Expect(0, "image", "backup", disk, "--json").Json;
        Assert.Equal(16384, (int)second["image"]!["block_size"]!);
        Assert.Equal(1L, (long)second["image"]!["blocks_changed"]!);
        Assert.InRange((long)second["bytes_added"]!, 16384, 16384 + 20_000); // the block, and the map

        string restored = Path.Combine(cli.Root, "restored.img");
        cli.Expect(0, "image", "restore", "latest", "--target", restored);
        Assert.Equal(bytes, File.ReadAllBytes(restored));
    }

    [Fact]
    public void AMultiTargetRestore_WritesIdenticalTargets_ADamagedChunkIsNamed_AndAWrongPasswordWritesNothing()
    {
        using var cli = new HavenCli();
        cli.Expect(0, "init");
        string disk = Path.Combine(cli.Root, "disk.img");
        Sh($"truncate -s 64M {disk} && mkfs.ext4 -q -F {disk}");
        string files = Path.Combine(cli.Root, "files");
        Directory.CreateDirectory(files);
        TestData.WriteRandomFiles(files, 40, 128 * 1024, seed: 3);
        WithMount(cli, disk, mount => Sh($"cp -a {files}/. {mount}/"));
        cli.Expect(0, "image", "backup", disk);

        // The snapshot as an NBD export, read by qemu-img: the same bytes as the source.
        int port = RunningServer.FreePort();
        using (var serve = StartServe(cli, "latest", "--listen", $"127.0.0.1:{port}", "--name", "disk"))
        {
            Sh($"qemu-img compare -f raw -F raw nbd://127.0.0.1:{port}/disk {disk}");
            Assert.Contains("no export named", Capture($"qemu-img info nbd://127.0.0.1:{port}/other").Output);
            Assert.NotEqual(0, Capture($"qemu-io -f raw -c 'write -P 1 0 512' nbd://127.0.0.1:{port}/disk").Code); // read-only
            Stop(serve);
        }

        // A writable export keeps writes in an overlay for as long as it runs; the snapshot does not change.
        string overlays = Path.Combine(cli.Root, "tmp");
        Directory.CreateDirectory(overlays);
        cli.Environment["TMPDIR"] = overlays;
        int writablePort = RunningServer.FreePort();
        using (var serve = StartServe(cli, "latest", "--listen", $"127.0.0.1:{writablePort}", "--name", "rw", "--writable"))
        {
            Sh($"qemu-io -f raw -c 'write -P 0xab 1000000 70000' nbd://127.0.0.1:{writablePort}/rw");
            Sh($"qemu-io -f raw -c 'read -P 0xab 1000000 70000' nbd://127.0.0.1:{writablePort}/rw"); // another connection sees it
            Assert.Equal(1, Capture($"qemu-img compare -f raw -F raw nbd://127.0.0.1:{writablePort}/rw {disk}").Code);
            Assert.Single(Directory.GetFiles(overlays, "haven-overlay-*"));
            Stop(serve);
        }

        Assert.Empty(Directory.GetFiles(overlays, "haven-overlay-*"));
        cli.Environment.Remove("TMPDIR");
        int againPort = RunningServer.FreePort();
        using (var serve = StartServe(cli, "latest", "--listen", $"127.0.0.1:{againPort}"))
        {
            string name = cli.Expect(0, "snapshots", "--json").Json.AsArray()[0]!["id"]!.ToString()[..8];
            Sh($"qemu-img compare -f raw -F raw nbd://127.0.0.1:{againPort}/{name} {disk}");
            Stop(serve);
        }

        string a = Path.Combine(cli.Root, "a.img"), b = Path.Combine(cli.Root, "b.img"), c = Path.Combine(cli.Root, "c.img");
        var both = cli.Expect(0, "image", "restore", "latest", "--target", a, "--target", b, "--target", c, "--json").Json;
        Assert.Empty(both["errors"]!.AsArray());
        Assert.Equal(File.ReadAllBytes(a), File.ReadAllBytes(b));
        Assert.Equal(File.ReadAllBytes(a), File.ReadAllBytes(c));
        Sh($"e2fsck -fn {a}");

        // A wrong password: refused before any target exists.
        string never = Path.Combine(cli.Root, "never.img");
        cli.Environment.Remove("HAVEN_PASSWORD_FILE");
        cli.Environment["HAVEN_PASSWORD"] = "not the password";
        var wrong = cli.Run("image", "restore", "latest", "--target", never);
        Assert.Equal(ExitCodes.WrongPassword, wrong.ExitCode);
        Assert.False(File.Exists(never));
        cli.Environment.Remove("HAVEN_PASSWORD");
        cli.Environment["HAVEN_PASSWORD_FILE"] = cli.PasswordFile;

        // A smaller target, and a file snapshot's command for an image, are refused with a reason.
        string small = Path.Combine(cli.Root, "small.img");
        Sh($"truncate -s 10M {small}");
        Assert.Contains("fewer than the image", cli.Expect(2, "image", "restore", "latest", "--target", small).Stderr);
        Assert.Contains("haven image restore", cli.Expect(2, "restore", "latest", "--target", Path.Combine(cli.Root, "x")).Stderr);

        // One damaged pack: the blocks it held are named, the others are written.
        string pack = Directory.GetFiles(Path.Combine(cli.Repository, "data"), "*", SearchOption.AllDirectories).OrderByDescending(f => new FileInfo(f).Length).First();
        using (var f = new FileStream(pack, FileMode.Open, FileAccess.ReadWrite))
        {
            f.Position = f.Length / 2;
            int v = f.ReadByte();
            f.Position = f.Length / 2;
            f.WriteByte((byte)(v ^ 0xFF));
        }

        var damaged = cli.Run("image", "restore", "latest", "--target", Path.Combine(cli.Root, "d.img"));
        Assert.Equal(ExitCodes.Failed, damaged.ExitCode);
        Assert.Matches(@"error: block \d+ \(bytes \d+-\d+\): chunk [0-9a-f]{8}", damaged.Stderr);
        Assert.DoesNotContain("   at ", damaged.Stderr);
    }

    [Fact]
    public void AMountedSource_IsFrozenWhileItIsRead_AndThawedAfterwards()
    {
        using var cli = new HavenCli();
        cli.Expect(0, "init");
        string disk = Path.Combine(cli.Root, "disk.img");
        Sh($"truncate -s 64M {disk} && mkfs.ext4 -q -F {disk}");
        string mount = Path.Combine(cli.Root, "mounted");
        Directory.CreateDirectory(mount);
        Sh($"mount -o loop {disk} {mount}");
        try
        {
            // Written just before the backup, maybe still in the page cache: freezing flushes it into the image.
            File.WriteAllBytes(Path.Combine(mount, "fresh.bin"), TestData.Bytes(3 << 20, seed: 5));
            var frozen = cli.Expect(0, "image", "backup", disk, "--json").Json;
            Assert.Equal("frozen", (string)frozen["image"]!["consistency"]!);
            Sh($"timeout 20 touch {mount}/after-the-backup"); // thawed: writes go on

            var unfrozen = cli.Expect(0, "image", "backup", disk, "--no-freeze", "--json");
            Assert.Equal("crash-consistent", (string)unfrozen.Json["image"]!["consistency"]!);
            Assert.Contains("only crash-consistent", unfrozen.Stderr);
        }
        finally
        {
            Sh($"umount {mount}");
        }

        string restored = Path.Combine(cli.Root, "restored.img");
        cli.Expect(0, "image", "restore", (string)cli.Expect(0, "snapshots", "--json").Json.AsArray()[0]!["id"]!, "--target", restored);
        Sh($"e2fsck -fn {restored}");
        var files = new List<string>();
        WithMount(cli, restored, m => files.AddRange(Directory.GetFiles(m).Select(Path.GetFileName)!), readOnly: true);
        Assert.Contains("fresh.bin", files);
        Assert.DoesNotContain("after-the-backup", files);
    }

    [Theory]
    [InlineData("gpt")]
    [InlineData("dos")]
    public void ARestoreOntoALargerDisk_GrowsTheTableTheLastPartitionAndItsExt4Filesystem(string label)
    {
        using var cli = new HavenCli();
        cli.Expect(0, "init");
        string disk = Path.Combine(cli.Root, "disk.img");
        Sh($"truncate -s 64M {disk} && printf 'label: {label}\\n,8M,{(label == "gpt" ? "U" : "ef")}\\n,,L\\n' | sfdisk -q {disk}");
        var (start, size) = PartitionOf(disk, 2);
        string files = Path.Combine(cli.Root, "files");
        Directory.CreateDirectory(files);
        TestData.WriteRandomFiles(files, 30, 128 * 1024, seed: 11);
        WithPartition(disk, start, size, device =>
        {
            Sh($"mkfs.ext4 -q -F {device}");
            WithMount(cli, device, mount => Sh($"cp -a {files}/. {mount}/"));
        });
        cli.Expect(0, "image", "backup", disk);

        // Without --grow, a GPT only moves its backup half to the new end; the partitions keep their sizes.
        string kept = Path.Combine(cli.Root, "kept.img");
        Sh($"truncate -s 160M {kept}");
        cli.Expect(0, "image", "restore", "latest", "--target", kept);
        Sh($"sfdisk --verify {kept}");
        Assert.Equal((start, size), PartitionOf(kept, 2));

        string larger = Path.Combine(cli.Root, "larger.img");
        Sh($"truncate -s 160M {larger}");
        var restored = cli.Expect(0, "image", "restore", "latest", "--target", larger, "--grow", "--json").Json;
        Assert.Contains(restored["adjustments"]!.AsArray(), a => ((string)a!).Contains("ext filesystem grown", StringComparison.Ordinal));
        var verify = Capture($"sfdisk --verify {larger}");
        Assert.True(verify.Code == 0 && !verify.Output.Contains("warning", StringComparison.OrdinalIgnoreCase), verify.Output);
        var (grownStart, grownSize) = PartitionOf(larger, 2);
        Assert.Equal(start, grownStart);
        Assert.InRange(grownSize, (160L << 20) - start - (2L << 20), (160L << 20) - start);
        Assert.Equal((1L << 20, 8L << 20), PartitionOf(larger, 1));
        WithPartition(larger, grownStart, grownSize, device =>
        {
            Sh($"e2fsck -fn {device}");
            var (_, superblock) = Capture($"dumpe2fs -h {device}");
            var blocks = long.Parse(System.Text.RegularExpressions.Regex.Match(superblock, @"Block count:\s+(\d+)").Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture);
            var blockSize = long.Parse(System.Text.RegularExpressions.Regex.Match(superblock, @"Block size:\s+(\d+)").Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture);
            Assert.InRange(blocks * blockSize, grownSize - (1L << 20), grownSize);
            WithMount(cli, device, _ => { }, readOnly: true, compareWith: files);
        });
    }

    [Fact]
    public void AChangedBlockMap_LetsAnUnwrittenTargetBeBackedUpWithoutReading_AndARestoreWriteOnlyTheBlocksThatDiffer()
    {
        using var cli = new HavenCli();
        cli.Expect(0, "init");
        string disk = Path.Combine(cli.Root, "disk.img");
        Sh($"dd if=/dev/zero of={disk} bs=1M count=64 status=none && mkfs.ext4 -q -F -E nodiscard {disk}");
        string files = Path.Combine(cli.Root, "files");
        Directory.CreateDirectory(files);
        TestData.WriteRandomFiles(files, 40, 128 * 1024, seed: 21);
        WithMount(cli, disk, mount => Sh($"cp -a {files}/. {mount}/"));

        // The first backup reads the used blocks; nothing wrote the file while it was read, so it gets a map.
        var first = cli.Expect(0, "image", "backup", disk, "--json").Json;
        Assert.True((long)first["bytes_read"]! > 5L << 20, first.ToJsonString());
        var again = cli.Expect(0, "image", "backup", disk, "--json").Json;
        Assert.Equal(0, (long)again["bytes_read"]!);
        Assert.Contains("nothing was read", (string)again["notes"]![0]!);
        Assert.Equal(0, (long)again["image"]!["blocks_changed"]!);
        Assert.Equal((long)first["image"]!["blocks_data"]!, (long)again["image"]!["blocks_data"]!);
        Assert.Equal(0, cli.Expect(0, "image", "backup", disk, "--read-all", "--json").Json["image"]!["blocks_changed"]!.GetValue<long>());

        // A restored target holds its snapshot: backing it up reads nothing, and it mounts with the files.
        string clone = Path.Combine(cli.Root, "clone.img");
        cli.Expect(0, "image", "restore", IdOf(first), "--target", clone);
        var cloneBackup = cli.Expect(0, "image", "backup", clone, "--json").Json;
        Assert.Equal(0, (long)cloneBackup["bytes_read"]!);

        // The source changes through a mount: the map shows the write, and every used block is read again.
        string changed = Path.Combine(cli.Root, "changed");
        Directory.CreateDirectory(changed);
        TestData.WriteRandomFiles(changed, 8, 128 * 1024, seed: 22);
        WithMount(cli, disk, mount => Sh($"cp -a {changed}/. {mount}/ && rm {mount}/{Path.GetFileName(Directory.GetFiles(files)[0])}"));
        var third = cli.Expect(0, "image", "backup", disk, "--json").Json;
        Assert.True((long)third["bytes_read"]! > 5L << 20, third.ToJsonString());
        Assert.Contains("it was written since", (string)third["notes"]![0]!);

        // Refreshing the clone writes only the blocks that differ, and leaves it byte for byte as a full restore does.
        var refresh = cli.Expect(0, "image", "restore", IdOf(third), "--target", clone, "--json").Json;
        long unchanged = (long)refresh["block_writes_unchanged"]!;
        Assert.InRange(unchanged, 900, 1023);
        Assert.InRange((long)refresh["block_writes_verified"]!, 16, 200);
        string fresh = Path.Combine(cli.Root, "fresh.img");
        cli.Expect(0, "image", "restore", IdOf(third), "--target", fresh);
        Assert.Equal(File.ReadAllBytes(fresh), File.ReadAllBytes(clone));
        Sh($"e2fsck -fn {clone}");

        // A map that was edited fails its checksum: the clone is written whole.
        string map = Directory.GetFiles(Path.Combine(cli.CacheDir), "*", SearchOption.AllDirectories).Single(f => f.Contains("/targets/", StringComparison.Ordinal) && MapNames(f, clone));
        File.WriteAllText(map, File.ReadAllText(map).Replace("\"unused_are_zero\":true", "\"unused_are_zero\":false", StringComparison.Ordinal));
        var tampered = cli.Expect(0, "image", "restore", IdOf(first), "--target", clone, "--json").Json;
        Assert.Equal(0, (long)tampered["block_writes_unchanged"]!);
        Assert.Contains("fails its checksum", (string)tampered["notes"]![0]!);
        Assert.Equal(0, (long)cli.Expect(0, "image", "restore", IdOf(third), "--target", clone, "--full", "--json").Json["block_writes_unchanged"]!);
        Assert.Equal(File.ReadAllBytes(fresh), File.ReadAllBytes(clone));
    }

    private static bool MapNames(string mapFile, string target) => File.ReadAllText(mapFile).Contains($"\"target\":\"{target}\"", StringComparison.Ordinal);

    [Theory]
    [InlineData(12, 8)]
    [InlineData(16, 64)]
    [InlineData(32, 64)]
    public void AFatFilesystem_IsReadOnlyWhereItsAllocationTableSaysClustersAreUsed(int fatBits, int megabytes)
    {
        using var cli = new HavenCli();
        cli.Expect(0, "init");
        string disk = Path.Combine(cli.Root, "fat.img");
        Sh($"dd if=/dev/zero of={disk} bs=1M count={megabytes} status=none && mkfs.vfat -F {fatBits} {(fatBits == 32 ? "-s 1" : "")} {disk} >/dev/null");
        string files = Path.Combine(cli.Root, "files");
        Directory.CreateDirectory(files);
        TestData.WriteRandomFiles(files, 4, megabytes * 1024 * 1024 / 16, seed: fatBits);
        Sh($"mcopy -i {disk} {files}/* ::/");

        var backup = cli.Expect(0, "image", "backup", disk, "--block-size", "16K", "--json").Json;
        long blocks = (long)backup["image"]!["blocks"]!, free = (long)backup["image"]!["blocks_free"]!;
        Assert.InRange(free, blocks * 6 / 10, blocks * 3 / 4); // a quarter of the space holds files
        Assert.InRange((long)backup["bytes_read"]!, megabytes * (1L << 20) / 4, megabytes * (1L << 20) * 4 / 10);
        Assert.Equal("none", (string)backup["image"]!["partition_table"]!); // a FAT boot sector is no MBR

        string restored = Path.Combine(cli.Root, "restored.img");
        cli.Expect(0, "image", "restore", "latest", "--target", restored);
        Sh($"fsck.vfat -n {restored}");
        string back = Path.Combine(cli.Root, "back");
        Directory.CreateDirectory(back);
        Sh($"mcopy -i {restored} '::/*' {back}/");
        foreach (string f in Directory.GetFiles(files))
        {
            Assert.Equal(File.ReadAllBytes(f), File.ReadAllBytes(Path.Combine(back, Path.GetFileName(f))));
        }
    }

    [Fact]
    public void AnNtfsFilesystem_IsReadOnlyWhereItsBitmapSaysClustersAreUsed()
    {
        using var cli = new HavenCli();
        cli.Expect(0, "init");
        // Filled with 0xFF before a quick mkntfs, so free clusters hold bytes that would be read and stored; files are
        // written through ntfs-3g (FUSE: the kernel has no NTFS driver).
        string disk = Path.Combine(cli.Root, "ntfs.img");
        Sh($"head -c 128M /dev/zero | tr '\\0' '\\377' > {disk} && mkntfs -q -F -f {disk} >/dev/null 2>&1");
        string files = Path.Combine(cli.Root, "files");
        Directory.CreateDirectory(files);
        TestData.WriteRandomFiles(files, 20, 1 << 20, seed: 11);
        string mount = Path.Combine(cli.Root, "mnt");
        Directory.CreateDirectory(mount);
        Sh($"ntfs-3g {disk} {mount} && cp -r {files} {mount}/files && umount {mount}");

        var backup = cli.Expect(0, "image", "backup", disk, "--json").Json;
        long blocks = (long)backup["image"]!["blocks"]!, free = (long)backup["image"]!["blocks_free"]!;
        Assert.InRange(free, blocks * 7 / 10, blocks); // 20 MiB of files and the metadata in 128 MiB
        Assert.InRange((long)backup["bytes_read"]!, 20L << 20, 36L << 20);
        Assert.Equal("none", (string)backup["image"]!["partition_table"]!); // an NTFS boot sector is no MBR

        string restored = Path.Combine(cli.Root, "restored.img");
        cli.Expect(0, "image", "restore", "latest", "--target", restored);
        Sh($"ntfsfix -n {restored} >/dev/null");
        Sh($"ntfs-3g -o ro {restored} {mount} && cmp {files}/file-0007.bin {mount}/files/file-0007.bin && cmp {files}/file-0019.bin {mount}/files/file-0019.bin; code=$?; umount {mount}; exit $code");
    }

    [Fact]
    public void AnXfsFilesystem_IsReadOnlyWhereItsFreeSpaceTreesSayBlocksAreUsed()
    {
        using var cli = new HavenCli();
        cli.Expect(0, "init");
        // Filled with 0xFF before mkfs (which must not discard), so free blocks hold bytes that would be read and stored.
        string disk = Path.Combine(cli.Root, "xfs.img");
        Sh($"head -c 320M /dev/zero | tr '\\0' '\\377' > {disk} && mkfs.xfs -q -f -K {disk}");
        string files = Path.Combine(cli.Root, "files");
        Directory.CreateDirectory(files);
        TestData.WriteRandomFiles(files, 40, 1 << 20, seed: 5);
        TestTree.CreateHardCases(Path.Combine(files, "tree"), includeLargeFile: false, seed: 6);
        WithMount(cli, disk, mount => Sh($"cp -a {files}/. {mount}/"));

        var backup = cli.Expect(0, "image", "backup", disk, "--json").Json;
        long blocks = (long)backup["image"]!["blocks"]!, free = (long)backup["image"]!["blocks_free"]!;
        Assert.InRange(free, blocks * 55 / 100, blocks); // 40 MiB of files, the log and the metadata in 320 MiB
        Assert.InRange((long)backup["bytes_read"]!, 40L << 20, 130L << 20);

        string restored = Path.Combine(cli.Root, "restored.img");
        cli.Expect(0, "image", "restore", "latest", "--target", restored);
        Sh($"xfs_repair -n {restored}");
        WithMount(cli, restored, _ => { }, readOnly: true, compareWith: files);
    }

    [Fact]
    public void FilesAndFoldersKeptInTheirInode_AreListedAndDumpedFromASnapshot()
    {
        using var cli = new HavenCli();
        cli.Expect(0, "init");
        string disk = Path.Combine(cli.Root, "inline.img");
        Sh($"truncate -s 32M {disk} && mkfs.ext4 -q -F -O inline_data -I 256 {disk}");
        var tiny = TestData.Bytes(40, seed: 1);    // fits in i_block
        var small = TestData.Bytes(100, seed: 2);  // i_block and the system.data attribute
        var large = TestData.Bytes(10_000, seed: 3);
        WithMount(cli, disk, mount =>
        {
            File.WriteAllBytes(Path.Combine(mount, "tiny.bin"), tiny);
            File.WriteAllBytes(Path.Combine(mount, "small.bin"), small);
            Directory.CreateDirectory(Path.Combine(mount, "few"));
            File.WriteAllBytes(Path.Combine(mount, "few", "a"), tiny);
            File.WriteAllBytes(Path.Combine(mount, "few", "large.bin"), large);
        });
        foreach (string inline in new[] { "/tiny.bin", "/small.bin", "/few" })
        {
            Assert.Contains("size of inline data", Capture($"debugfs -R 'stat {inline}' {disk}").Output, StringComparison.OrdinalIgnoreCase);
        }

        string id = IdOf(cli.Expect(0, "image", "backup", disk, "--json").Json);
        var few = cli.Expect(0, "image", "ls", id, "/few", "--json").Json.AsArray();
        Assert.Equal(["a", "large.bin"], few.Select(e => (string)e!["name"]!));
        foreach (var (path, expected) in new[] { ("/tiny.bin", tiny), ("/small.bin", small), ("/few/a", tiny), ("/few/large.bin", large) })
        {
            string dumped = Path.Combine(cli.Root, "dumped");
            cli.Expect(0, "image", "dump", id, path, "--output", dumped);
            Assert.Equal(expected, File.ReadAllBytes(dumped));
        }
    }

    private static string IdOf(JsonNode backup) => (string)backup["snapshot_id"]!;

    /// <summary>An export that is killed when the test leaves it early (a failed assertion), so nothing is left running.</summary>
    private sealed class Serving(Process process) : IDisposable
    {
        public Process Process { get; } = process;

        public void Dispose()
        {
            if (!Process.HasExited)
            {
                Process.Kill();
                Process.WaitForExit();
            }

            Process.Dispose();
        }
    }

    /// <summary>Starts <c>haven image serve</c> and waits until it listens.</summary>
    private static Serving StartServe(HavenCli cli, params string[] args)
    {
        var serve = cli.Start(["image", "serve", .. args]);
        var line = serve.StandardOutput.ReadLineAsync().WaitAsync(TimeSpan.FromSeconds(60)).GetAwaiter().GetResult();
        var serving = new Serving(serve);
        if (line?.StartsWith("serving image snapshot", StringComparison.Ordinal) != true)
        {
            serving.Dispose();
            Assert.Fail($"haven image serve said: {line}");
        }

        return serving;
    }

    /// <summary>Stops an export as Ctrl-C or systemd would (SIGTERM), and expects it to end cleanly.</summary>
    private static void Stop(Serving serving)
    {
        var serve = serving.Process;
        Sh($"kill -TERM {serve.Id}");
        Assert.True(serve.WaitForExit(30_000), "haven image serve did not stop on SIGTERM");
        Assert.Equal(0, serve.ExitCode);
    }

    private static long Allocated(string path)
    {
        var (code, output) = Capture($"du -B1 {path}");
        Assert.Equal(0, code);
        return long.Parse(output.Split('\t')[0], System.Globalization.CultureInfo.InvariantCulture);
    }

    /// <summary>Start and length in bytes of partition <paramref name="number"/> of a disk image, as sfdisk reads its table.</summary>
    private static (long Start, long Size) PartitionOf(string disk, int number)
    {
        var (code, output) = Capture($"sfdisk --json {disk}");
        Assert.True(code == 0, output);
        var partition = JsonNode.Parse(output)!["partitiontable"]!["partitions"]!.AsArray()[number - 1]!;
        return ((long)partition["start"]! * 512, (long)partition["size"]! * 512);
    }

    /// <summary>A loop device over one partition of a disk image, for <paramref name="body"/>.</summary>
    private static void WithPartition(string disk, long start, long size, Action<string> body)
    {
        var (code, device) = Capture($"losetup --find --show --offset {start} --sizelimit {size} {disk}");
        Assert.True(code == 0, device);
        try
        {
            body(device.Trim());
        }
        finally
        {
            Sh($"losetup --detach {device.Trim()}");
        }
    }

    /// <summary>Mounts an ext4 image on a loop device for <paramref name="body"/>; with <paramref name="compareWith"/>, compares its files.</summary>
    internal static void WithMount(HavenCli cli, string image, Action<string> body, bool readOnly = false, string? compareWith = null)
    {
        string mount = Path.Combine(cli.Root, "mnt-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(mount);
        Sh($"mount -o loop{(readOnly ? ",ro" : "")} {image} {mount}");
        try
        {
            if (compareWith is not null)
            {
                var differences = TestTree.Compare(compareWith, mount, new CompareOptions(Ownership: false, Times: false, Sparse: false)).Where(d => !d.Contains("lost+found", StringComparison.Ordinal)).ToList();
                Assert.True(differences.Count == 0, "restored image differs: " + string.Join("\n", differences.Take(10)));
            }
            else
            {
                body(mount);
            }
        }
        finally
        {
            Sh($"umount {mount}");
        }
    }

    internal static void Sh(string command)
    {
        var (code, output) = Capture(command);
        Assert.True(code == 0, $"{command}: exit {code}\n{output}");
    }

    private static (int Code, string Output) Capture(string command)
    {
        var psi = new ProcessStartInfo("bash") { RedirectStandardOutput = true, RedirectStandardError = true };
        psi.ArgumentList.Add("-c");
        psi.ArgumentList.Add(command);
        using var process = Process.Start(psi)!;
        string output = process.StandardOutput.ReadToEnd() + process.StandardError.ReadToEnd();
        process.WaitForExit();
        return (process.ExitCode, output);
    }
}
